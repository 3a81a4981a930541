//! Decide, without I/O: whether a TalosConfig can be rendered now, and what its status says.

use api::capi::annotations;
use api::conditions::reason;

use super::scope::Scope;

/// What the reconcile does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Reconciliation is paused; the message names the source.
    Paused(String),
    /// Something else must happen first; nothing is written but status.
    Wait {
        reason: &'static str,
        message: String,
    },
    /// The Machine already names a bootstrap data Secret that our status does not know
    /// (`clusterctl move` does not restore status): adopt it as it is.
    Reuse(String),
    /// Render and write the bootstrap data.
    Render,
}

pub fn gate(scope: &Scope) -> Gate {
    if scope
        .config
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(annotations::PAUSED))
    {
        return Gate::Paused("the TalosConfig has the cluster.x-k8s.io/paused annotation".into());
    }
    // A paused Cluster holds its configs even before Cluster API has adopted them.
    if let Some(source) = scope.cluster.as_ref().and_then(|c| c.paused_by()) {
        return Gate::Paused(source.to_owned());
    }
    if let (None, Some(pool)) = (&scope.machine, &scope.unsupported_pool) {
        return Gate::Wait {
            reason: reason::WAITING_FOR_OWNER,
            message: format!(
                "owned by MachinePool {pool}, but MachinePool support is off (start the manager with --machine-pools)"
            ),
        };
    }
    let Some(machine) = &scope.machine else {
        return Gate::Wait {
            reason: reason::WAITING_FOR_OWNER,
            message: "waiting for a Machine to own this TalosConfig".into(),
        };
    };
    let Some(cluster_name) = &scope.cluster_name else {
        return Gate::Wait {
            reason: reason::WAITING_FOR_OWNER,
            message: "the owner Machine names no Cluster".into(),
        };
    };
    let Some(cluster) = &scope.cluster else {
        return Gate::Wait {
            reason: reason::WAITING_FOR_CLUSTER_INFRASTRUCTURE,
            message: format!("waiting for Cluster {cluster_name} to exist"),
        };
    };
    let ours = scope
        .config
        .status
        .as_ref()
        .and_then(|s| s.data_secret_name.as_ref());
    if let (Some(name), None) = (&machine.spec.bootstrap.data_secret_name, ours) {
        return Gate::Reuse(name.clone());
    }
    if !cluster.infrastructure_provisioned() {
        return Gate::Wait {
            reason: reason::WAITING_FOR_CLUSTER_INFRASTRUCTURE,
            message: format!(
                "waiting for the infrastructure of Cluster {cluster_name} to be provisioned"
            ),
        };
    }
    if cluster.endpoint().is_none() {
        return Gate::Wait {
            reason: reason::WAITING_FOR_CONTROL_PLANE_ENDPOINT,
            message: format!("waiting for Cluster {cluster_name} to get spec.controlPlaneEndpoint"),
        };
    }
    Gate::Render
}

/// The deterministic name of a machine's bootstrap data Secret (CABPT's, so existing clusters
/// adopt cleanly), kept within the 253 characters a name may have.
pub fn data_secret_name(machine: &str) -> String {
    const SUFFIX: &str = "-bootstrap-data";
    let keep = 253 - SUFFIX.len();
    let base: String = machine.chars().take(keep).collect();
    format!("{base}{SUFFIX}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::bootstrap::v1alpha3::{TalosConfig, TalosConfigSpec, TalosConfigStatus};
    use api::capi::{
        ApiEndpoint, Cluster, ClusterInitialization, ClusterSpec, ClusterStatus, Machine,
        MachineSpec,
    };

    fn scope() -> Scope {
        let mut cluster = Cluster::new("c", ClusterSpec::default());
        cluster.spec.control_plane_endpoint = Some(ApiEndpoint {
            host: "10.0.0.1".into(),
            port: 6443,
        });
        cluster.status = Some(ClusterStatus {
            initialization: Some(ClusterInitialization {
                infrastructure_provisioned: Some(true),
                control_plane_initialized: None,
            }),
            ..ClusterStatus::default()
        });
        Scope {
            config: TalosConfig::new("m-0", TalosConfigSpec::default()),
            machine: Some(Machine::new(
                "m-0",
                MachineSpec {
                    cluster_name: "c".into(),
                    ..MachineSpec::default()
                },
            )),
            cluster_name: Some("c".into()),
            cluster: Some(cluster),
            unsupported_pool: None,
        }
    }

    #[test]
    fn renders_only_when_owner_cluster_infrastructure_and_endpoint_are_there() {
        assert_eq!(gate(&scope()), Gate::Render);

        let mut s = scope();
        s.machine = None;
        assert!(
            matches!(gate(&s), Gate::Wait { reason, .. } if reason == reason::WAITING_FOR_OWNER)
        );

        let mut s = scope();
        if let Some(c) = s.cluster.as_mut() {
            c.status = None;
        }
        assert!(
            matches!(gate(&s), Gate::Wait { reason, .. } if reason == reason::WAITING_FOR_CLUSTER_INFRASTRUCTURE)
        );

        let mut s = scope();
        if let Some(c) = s.cluster.as_mut() {
            c.spec.control_plane_endpoint = None;
        }
        assert!(
            matches!(gate(&s), Gate::Wait { reason, .. } if reason == reason::WAITING_FOR_CONTROL_PLANE_ENDPOINT)
        );
    }

    #[test]
    fn pause_wins_and_names_its_source() {
        let mut s = scope();
        if let Some(c) = s.cluster.as_mut() {
            c.spec.paused = Some(true);
        }
        assert_eq!(gate(&s), Gate::Paused("Cluster spec.paused is true".into()));
        let mut s = scope();
        s.config
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(annotations::PAUSED.into(), String::new());
        s.machine = None;
        assert!(matches!(gate(&s), Gate::Paused(m) if m.contains("TalosConfig")));
    }

    #[test]
    fn a_moved_machine_keeps_its_secret() {
        let mut s = scope();
        if let Some(m) = s.machine.as_mut() {
            m.spec.bootstrap.data_secret_name = Some("moved-bootstrap-data".into());
        }
        assert_eq!(gate(&s), Gate::Reuse("moved-bootstrap-data".into()));
        // Once our status knows the Secret, the usual path (render, never rewrite a booted
        // machine's data) applies.
        s.config.status = Some(TalosConfigStatus {
            data_secret_name: Some("moved-bootstrap-data".into()),
            ..TalosConfigStatus::default()
        });
        assert_eq!(gate(&s), Gate::Render);
    }

    #[test]
    fn data_secret_names_fit_kubernetes() {
        assert_eq!(data_secret_name("w-0"), "w-0-bootstrap-data");
        assert_eq!(data_secret_name(&"a".repeat(253)).len(), 253);
    }
}
