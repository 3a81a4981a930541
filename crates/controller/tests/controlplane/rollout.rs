//! Rollouts that replace machines (a Kubernetes version change): within maxSurge and
//! maxUnavailable, within etcd quorum, and through a controller killed midway.

use super::*;

/// The most control-plane machines (deleting ones included) there were at once while it runs,
/// and every machine name seen, from every change of them a watch delivers.
struct Peak {
    max: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    names: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Peak {
    async fn watch(client: &kube::Client, ns: &str) -> Peak {
        let max = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let names = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
        let (seen, named) = (max.clone(), names.clone());
        let task = on_every_change(client, ns, move |all| {
            seen.fetch_max(all.len(), std::sync::atomic::Ordering::SeqCst);
            named
                .lock()
                .unwrap()
                .extend(all.iter().map(|m| m.name_any()));
        })
        .await;
        Peak { max, names, task }
    }

    fn get(&self) -> usize {
        self.max.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many distinct machines were seen.
    fn machines_seen(&self) -> usize {
        self.names.lock().unwrap().len()
    }
}

impl Drop for Peak {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Holds the deletion of every control-plane Machine of `ns` with a pre-terminate hook of the
/// test's own, as an infrastructure provider that takes its time (or another party's hook)
/// would, and records the most machines seen deleting at once. A deleting machine is let go
/// once `together` machines are deleting, once no live machine is left off `version`, once the
/// control plane says it waits for the deletion before replacing another, or 30 s after it was
/// first seen deleting. Without the hold, Cluster API may finish one deletion before the
/// controller's next look on a loaded machine, and the next step is then a creation.
struct HoldDeletion {
    most: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HoldDeletion {
    const HOOK: &str = "pre-terminate.delete.hook.machine.cluster.x-k8s.io/test-hold";

    /// Holds the machines there are before it returns.
    async fn start(
        client: &kube::Client,
        ns: &str,
        together: usize,
        version: &str,
    ) -> HoldDeletion {
        let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (api, cps, seen, version) = (
            Api::<Machine>::namespaced(client.clone(), ns),
            Api::<TalosControlPlane>::namespaced(client.clone(), ns),
            most.clone(),
            version.to_owned(),
        );
        let hook = |value: Option<&str>| {
            Patch::Merge(json!({"metadata": {"annotations": {HoldDeletion::HOOK: value}}}))
        };
        let held = |m: &Machine| m.annotations().contains_key(HoldDeletion::HOOK);
        for m in machines(client, ns).await {
            api.patch(&m.name_any(), &PatchParams::default(), &hook(Some("")))
                .await
                .unwrap();
        }
        let task = tokio::spawn(async move {
            let mut since = std::collections::HashMap::new();
            loop {
                let all = api
                    .list(&ListParams::default().labels("cluster.x-k8s.io/control-plane"))
                    .await
                    .map(|l| l.items)
                    .unwrap_or_default();
                let (deleting, live): (Vec<&Machine>, Vec<&Machine>) = all
                    .iter()
                    .partition(|m| m.metadata.deletion_timestamp.is_some());
                seen.fetch_max(deleting.len(), std::sync::atomic::Ordering::SeqCst);
                for m in live.iter().filter(|m| !held(m)) {
                    let _ = api
                        .patch(&m.name_any(), &PatchParams::default(), &hook(Some("")))
                        .await;
                }
                let replaced = live
                    .iter()
                    .all(|m| m.spec.version.as_deref() == Some(version.as_str()));
                let waits = cps.list(&ListParams::default()).await.is_ok_and(|l| {
                    l.items.iter().any(|cp| {
                        condition(cp, ConditionType::RollingOut)
                            .is_some_and(|c| c.message.contains("to finish deleting"))
                    })
                });
                for m in deleting.iter().filter(|m| held(m)) {
                    let first = *since
                        .entry(m.name_any())
                        .or_insert_with(tokio::time::Instant::now);
                    if deleting.len() >= together
                        || replaced
                        || waits
                        || first.elapsed() > Duration::from_secs(30)
                    {
                        let _ = api
                            .patch(&m.name_any(), &PatchParams::default(), &hook(None))
                            .await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        HoldDeletion { most, task }
    }

    /// The most machines seen being deleted at once.
    fn most_deleting(&self) -> usize {
        self.most.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for HoldDeletion {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The fewest voting members etcd had after each change from `from` on, replayed from the
/// simulator's own history (members join as learners and count once promoted).
fn fewest_voters(history: &[talos_sim::etcd::Change], from: usize) -> usize {
    let mut voters = std::collections::BTreeSet::new();
    let mut fewest = usize::MAX;
    for (i, change) in history.iter().enumerate() {
        match change.op {
            Op::Bootstrap | Op::Promote => {
                voters.insert(change.id);
            }
            Op::Join => {}
            Op::Remove => {
                voters.remove(&change.id);
            }
        }
        if i >= from {
            fewest = fewest.min(voters.len());
        }
    }
    fewest
}

/// Wait until every one of `n` machines runs `version` with the current spec (status
/// upToDateReplicas, RollingOut False) and etcd has `n` healthy voters.
async fn rolled_out(
    client: &kube::Client,
    ns: &str,
    name: &str,
    sim: &Simulator,
    n: usize,
    version: &str,
) {
    let api = Api::<TalosControlPlane>::namespaced(client.clone(), ns);
    eventually(
        client,
        ns,
        name,
        &format!("{n} machines rolled out to {version}"),
        async || {
            let tcp = api.get(name).await.ok()?;
            let status = tcp.status.as_ref()?;
            let all = machines(client, ns).await;
            (status.up_to_date_replicas == Some(n as i32)
                && condition(&tcp, ConditionType::RollingOut)?.status == "False"
                && all.len() == n
                && all
                    .iter()
                    .all(|m| m.spec.version.as_deref() == Some(version)))
            .then_some(())
        },
    )
    .await;
    settled(client, ns, name, sim, n).await;
}

#[tokio::test]
async fn kubernetes_upgrade_with_max_surge_1_never_exceeds_four_machines_or_drops_a_member() {
    let (client, ns, _controller) = setup("cp-roll-surge").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "u", 3).await;
    settled(&client, &ns, "u", &infra.sim, 3).await;
    let before = machine_names(&client, &ns).await;
    let id = sim_infra::cluster_id(&client, &ns, "u").await.unwrap();
    let start = infra.sim.etcd_history(&id).len();

    // Skipping a minor version is refused at admission, and says what to do.
    let api = Api::<TalosControlPlane>::namespaced(client.clone(), &ns);
    let refused = api
        .patch(
            "u",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"version": "v1.37.0"}})),
        )
        .await
        .expect_err("v1.35 → v1.37 skips a minor version");
    assert!(
        refused.to_string().contains("may not skip a minor version"),
        "{refused}"
    );

    let peak = Peak::watch(&client, &ns).await;
    patch_spec(&client, &ns, "u", json!({"version": "v1.36.0"})).await;
    rolled_out(&client, &ns, "u", &infra.sim, 3, "v1.36.0").await;
    let after = machine_names(&client, &ns).await;
    assert!(
        after.iter().all(|m| !before.contains(m)),
        "every machine replaced: {before:?} → {after:?}"
    );
    assert!(
        peak.get() <= 4,
        "{} machines at once with maxSurge 1",
        peak.get()
    );
    let history = infra.sim.etcd_history(&id);
    assert!(
        fewest_voters(&history, start) >= 3,
        "a member left before its replacement joined: {history:?}"
    );
    assert_etcd_invariants(&client, &ns, "u", &infra.sim).await;
}

#[tokio::test]
async fn max_surge_0_replaces_in_place_of_each_machine_and_replans_on_a_spec_change() {
    let (client, ns, _controller) = setup("cp-roll-unavail").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "v", 3).await;
    settled(&client, &ns, "v", &infra.sim, 3).await;
    let id = sim_infra::cluster_id(&client, &ns, "v").await.unwrap();
    let start = infra.sim.etcd_history(&id).len();

    let peak = Peak::watch(&client, &ns).await;
    patch_spec(
        &client,
        &ns,
        "v",
        json!({"version": "v1.36.0", "rolloutStrategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}}),
    )
    .await;
    // Mid-rollout (one machine replaced), the Talos configuration changes in a way Talos
    // applies only with a reboot: the plan starts over for every machine, the new one
    // included.
    let first = eventually(&client, &ns, "v", "one machine replaced", async || {
        machines(&client, &ns)
            .await
            .into_iter()
            .find(|m| m.spec.version.as_deref() == Some("v1.36.0"))
            .map(|m| m.name_any())
    })
    .await;
    patch_spec(
        &client,
        &ns,
        "v",
        json!({"controlPlaneConfig": {"controlplane": {
            "generateType": "controlplane", "talosVersion": "v1.13",
            "strategicPatches": ["machine:\n  install:\n    disk: /dev/sda\n", PROXY_PATCH]
        }}}),
    )
    .await;
    rolled_out(&client, &ns, "v", &infra.sim, 3, "v1.36.0").await;
    let after = machine_names(&client, &ns).await;
    assert!(
        !after.contains(&first),
        "{first} was made from the old config: {after:?}"
    );
    assert!(
        peak.get() <= 3,
        "{} machines at once with maxSurge 0",
        peak.get()
    );
    let history = infra.sim.etcd_history(&id);
    assert!(
        fewest_voters(&history, start) >= 2,
        "more than one member down at once: {history:?}"
    );
    assert_etcd_invariants(&client, &ns, "v", &infra.sim).await;
}

#[tokio::test]
async fn five_machines_with_max_unavailable_2_replace_two_at_a_time_within_quorum() {
    let (client, ns, _controller) = setup("cp-roll-wide").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "w", 5).await;
    settled(&client, &ns, "w", &infra.sim, 5).await;
    let id = sim_infra::cluster_id(&client, &ns, "w").await.unwrap();
    let start = infra.sim.etcd_history(&id).len();
    let peak = Peak::watch(&client, &ns).await;
    let hold = HoldDeletion::start(&client, &ns, 2, "v1.36.0").await;
    patch_spec(
        &client,
        &ns,
        "w",
        json!({"version": "v1.36.0", "rolloutStrategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 2}}}),
    )
    .await;
    rolled_out(&client, &ns, "w", &infra.sim, 5, "v1.36.0").await;
    assert!(
        peak.get() <= 5,
        "{} machines at once with maxSurge 0",
        peak.get()
    );
    assert_eq!(
        hold.most_deleting(),
        2,
        "maxUnavailable 2 replaces two machines at once, never three"
    );
    let history = infra.sim.etcd_history(&id);
    assert!(
        fewest_voters(&history, start) >= 3,
        "five members keep quorum with at most two down: {history:?}"
    );
    assert_etcd_invariants(&client, &ns, "w", &infra.sim).await;
}

#[tokio::test]
async fn one_machine_with_max_surge_0_surges_and_says_why() {
    let (client, ns, _controller) = setup("cp-roll-one").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "o", 1).await;
    settled(&client, &ns, "o", &infra.sim, 1).await;
    let id = sim_infra::cluster_id(&client, &ns, "o").await.unwrap();
    let start = infra.sim.etcd_history(&id).len();
    let peak = Peak::watch(&client, &ns).await;
    patch_spec(
        &client,
        &ns,
        "o",
        json!({"version": "v1.36.0", "rolloutStrategy": {"rollingUpdate": {"maxSurge": 0}}}),
    )
    .await;
    // One replica cannot lose its only member: the rollout surges one machine and says why.
    let api = Api::<TalosControlPlane>::namespaced(client.clone(), &ns);
    eventually(
        &client,
        &ns,
        "o",
        "RollingOut explains the surge",
        async || {
            let tcp = api.get("o").await.ok()?;
            let c = condition(&tcp, ConditionType::RollingOut)?;
            c.message
                .contains("one machine is added first")
                .then_some(())
        },
    )
    .await;
    rolled_out(&client, &ns, "o", &infra.sim, 1, "v1.36.0").await;
    assert!(peak.get() <= 2, "{} machines at once", peak.get());
    let history = infra.sim.etcd_history(&id);
    assert!(
        fewest_voters(&history, start) >= 1,
        "the only member left before its replacement joined: {history:?}"
    );
    assert_etcd_invariants(&client, &ns, "o", &infra.sim).await;
}

#[tokio::test]
async fn a_controller_killed_at_five_points_of_a_rollout_still_converges_without_extra_steps() {
    let (client, ns, controller) = setup("cp-roll-restart").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    control_plane_cluster(&client, &ns, "k", 3).await;
    settled(&client, &ns, "k", &infra.sim, 3).await;
    let id = sim_infra::cluster_id(&client, &ns, "k").await.unwrap();
    let start = infra.sim.etcd_history(&id).len();
    let peak = Peak::watch(&client, &ns).await;
    patch_spec(&client, &ns, "k", json!({"version": "v1.36.0"})).await;

    // Each point is a state of the rollout; when it is seen, the controller is killed (its
    // task aborted wherever it is) and a fresh one, with no memory, starts a second later.
    type Point = fn(&[Machine]) -> bool;
    let points: [(&str, Point); 5] = [
        ("the spec changed", |_| true),
        ("a surge machine exists", |all| all.len() == 4),
        ("an outdated machine is being deleted", |all| {
            all.iter().any(|m| m.metadata.deletion_timestamp.is_some())
        }),
        ("two machines are up to date", |all| {
            all.iter()
                .filter(|m| m.spec.version.as_deref() == Some("v1.36.0"))
                .count()
                >= 2
        }),
        ("the last outdated machine is going", |all| {
            all.iter()
                .filter(|m| m.spec.version.as_deref() == Some("v1.36.0"))
                .count()
                == 3
                && all.len() > 3
        }),
    ];
    let mut controller = Some(controller);
    for (what, reached) in points {
        let seen = eventually(&client, &ns, "k", what, async || {
            let all = machines(&client, &ns).await;
            let done = all.len() == 3
                && all
                    .iter()
                    .all(|m| m.spec.version.as_deref() == Some("v1.36.0"));
            (reached(&all) || done).then_some(!done)
        })
        .await;
        // Gone for good (its task ended) before the fresh one starts.
        if let Some(killed) = controller.take() {
            killed.stop().await;
        }
        controller = Some(start_controller(&client, &ns));
        if !seen {
            break;
        }
    }
    rolled_out(&client, &ns, "k", &infra.sim, 3, "v1.36.0").await;
    assert_eq!(
        peak.machines_seen(),
        6,
        "three machines replaced by exactly three: nothing created or deleted twice"
    );
    assert!(
        peak.get() <= 4,
        "{} machines at once with maxSurge 1",
        peak.get()
    );
    let history = infra.sim.etcd_history(&id);
    assert!(fewest_voters(&history, start) >= 3, "{history:?}");
    assert_eq!(
        infra.sim.etcd_members(&id).len(),
        3,
        "no orphan member is left"
    );
    assert_etcd_invariants(&client, &ns, "k", &infra.sim).await;
}
