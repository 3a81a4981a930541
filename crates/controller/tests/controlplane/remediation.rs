//! MachineHealthCheck remediation.

use super::*;

/// The replacement of `gone` (the machine naming it in its remediation-for), once the control
/// plane is back to three healthy members.
async fn replacement_of(
    client: &kube::Client,
    ns: &str,
    cp: &str,
    sim: &Simulator,
    gone: &str,
) -> String {
    let name = eventually(
        client,
        ns,
        cp,
        &format!("machine {gone} remediated and replaced"),
        async || {
            let all = machines(client, ns).await;
            if all.iter().any(|m| m.name_any() == gone) {
                return None;
            }
            all.iter()
                .find(|m| {
                    m.annotations()
                        .get("controlplane.cluster.x-k8s.io/remediation-for")
                        .is_some_and(|v| v.contains(&format!("\"machine\":\"{gone}\"")))
                })
                .map(ResourceExt::name_any)
        },
    )
    .await;
    settled(client, ns, cp, sim, 3).await;
    name
}

#[tokio::test]
async fn mhc_remediation_replaces_one_machine_at_a_time_within_retry_limits() {
    let (client, ns, _controller, ctx) = setup_context("cp-remediate", Default::default()).await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "m", 3).await;
    let api = Api::<TalosControlPlane>::namespaced(client.clone(), &ns);
    api.patch(
        "m",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"remediationStrategy": {
            "maxRetry": 1, "retryPeriodSeconds": 0, "minHealthyPeriodSeconds": 3600
        }}})),
    )
    .await
    .unwrap();
    settled(&client, &ns, "m", &infra.sim, 3).await;
    let last = async || {
        api.get("m")
            .await
            .unwrap()
            .status
            .and_then(|s| s.last_remediation)
            .unwrap()
    };

    let first = machines(&client, &ns).await.remove(0).name_any();
    mark_unhealthy(&client, &ns, &first).await;
    let second = replacement_of(&client, &ns, "m", &infra.sim, &first).await;
    assert_eq!(
        (last().await.machine, last().await.retry_count),
        (first.clone(), 0)
    );

    // The replacement fails too, soon after: a retry.
    mark_unhealthy(&client, &ns, &second).await;
    let third = replacement_of(&client, &ns, "m", &infra.sim, &second).await;
    assert_eq!(
        (last().await.machine, last().await.retry_count),
        (second.clone(), 1)
    );

    // And again: maxRetry 1 is spent; the machine stays and the condition says why.
    mark_unhealthy(&client, &ns, &third).await;
    wait_condition(
        &client,
        &ns,
        "m",
        ConditionType::Remediating,
        "True",
        "maxRetry is 1",
    )
    .await;
    reconciled_since(&ctx, &client, &ns, "m").await;
    assert!(
        machines(&client, &ns)
            .await
            .iter()
            .any(|m| m.name_any() == third)
    );
    assert_etcd_invariants(&client, &ns, "m", &infra.sim).await;
}
