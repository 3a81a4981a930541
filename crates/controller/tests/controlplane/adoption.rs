//! Taking over control-plane machines made by CACPPT, which carry none of our records.

use super::*;
use controller::controlplane::machines::{self as m, cleanup_hook};

/// Machines made by CACPPT carry none of our records (what they were made from, their
/// TalosConfig's digest, the template keys) and not our pre-terminate hook. CACPPT's module is
/// not served here, so such machines are made by taking ours off a settled control plane while
/// no controller runs. Taking over, the controller adds the records and the hook in place:
/// no machine is replaced, no node boots again, etcd membership does not change.
#[tokio::test]
async fn machines_without_our_records_are_adopted_without_a_reboot_or_a_membership_change() {
    let (client, ns, first) = setup("cp-adopt").await;
    let infra = sim_infra::start(&client, &ns, &["a", "b", "c"]);
    let (api, names, booted, id, history) =
        settled_then_our_records_stripped(&client, &ns, &infra, first).await;

    let (_controller, ctx) = start_controller_context(&client, &ns, Default::default());
    records_and_hook_back(&client, &ns, &api, &names).await;
    settled_and_up_to_date(&client, &ns, &infra).await;
    // A reconcile of the adopted control plane as it is now starts no rollout.
    no_machine_replaced(&client, &ns, &ctx, names).await;
    no_node_booted_again_and_no_membership_change(&client, &ns, &infra, &booted, &id, history)
        .await;
}

/// Brings control plane "ad" up with three machines, stops the controller and takes our records
/// and hook off the machines; returns the Machine API, the machines' names, their boots, the
/// etcd cluster id and its history length.
async fn settled_then_our_records_stripped(
    client: &kube::Client,
    ns: &str,
    infra: &sim_infra::SimInfra,
    first: Running,
) -> (Api<Machine>, Vec<String>, Vec<(String, u64)>, String, usize) {
    control_plane_cluster(client, ns, "ad", 3).await;
    settled(client, ns, "ad", &infra.sim, 3).await;
    drop(first);
    let ours = [
        m::MADE_FROM_TEMPLATE.to_owned(),
        m::MADE_FROM_TEMPLATE_DIGEST.to_owned(),
        m::MADE_FROM_CONFIG_DIGEST.to_owned(),
        m::MADE_WITH_POOLS.to_owned(),
        m::TEMPLATE_KEYS.to_owned(),
        cleanup_hook(),
    ];
    let api = Api::<Machine>::namespaced(client.clone(), ns);
    let strip: serde_json::Map<String, serde_json::Value> = ours
        .iter()
        .map(|k| (k.clone(), serde_json::Value::Null))
        .collect();
    for name in machine_names(client, ns).await {
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": strip}})),
        )
        .await
        .unwrap();
    }
    for machine in machines(client, ns).await {
        let held: Vec<&String> = ours
            .iter()
            .filter(|k| machine.annotations().contains_key(*k))
            .collect();
        assert!(held.is_empty(), "{}: {held:?}", machine.name_any());
    }
    let mut names = machine_names(client, ns).await;
    names.sort();
    let booted = boots(client, ns, &infra.sim).await;
    let id = sim_infra::cluster_id(client, ns, "ad").await.unwrap();
    let history = infra.sim.etcd_history(&id).len();
    (api, names, booted, id, history)
}

/// The controller puts the records and the hook back on every machine, the config digest read
/// from its TalosConfig.
async fn records_and_hook_back(
    client: &kube::Client,
    ns: &str,
    api: &Api<Machine>,
    names: &[String],
) {
    let configs = Api::<api::bootstrap::v1alpha3::TalosConfig>::namespaced(client.clone(), ns);
    for name in names {
        let machine = eventually(client, ns, "ad", "records and hook back", async || {
            let machine = api.get(name).await.ok()?;
            let annotations = machine.annotations();
            [
                m::MADE_FROM_CONFIG_DIGEST.to_owned(),
                m::MADE_WITH_POOLS.to_owned(),
                m::TEMPLATE_KEYS.to_owned(),
                cleanup_hook(),
            ]
            .iter()
            .all(|k| annotations.contains_key(k))
            .then_some(machine)
        })
        .await;
        let config = machine.spec.bootstrap.config_ref.as_ref().unwrap();
        let config = configs.get(&config.name).await.unwrap();
        assert_eq!(
            machine.annotations()[m::MADE_FROM_CONFIG_DIGEST],
            m::config_digest(&config.spec).unwrap(),
            "{name}: its TalosConfig's digest, read once"
        );
    }
}

/// The adopted control plane settles with its machines up to date.
async fn settled_and_up_to_date(client: &kube::Client, ns: &str, infra: &sim_infra::SimInfra) {
    settled(client, ns, "ad", &infra.sim, 3).await;
    wait_condition(
        client,
        ns,
        "ad",
        ConditionType::MachinesUpToDate,
        "True",
        "",
    )
    .await;
}

/// Once the control plane is reconciled as it is now, no machine is replaced.
async fn no_machine_replaced(
    client: &kube::Client,
    ns: &str,
    ctx: &controller::Context,
    names: Vec<String>,
) {
    reconciled_since(ctx, client, ns, "ad").await;
    let mut after = machine_names(client, ns).await;
    after.sort();
    assert_eq!(after, names, "no machine replaced");
}

/// No node booted again, and etcd membership did not change.
async fn no_node_booted_again_and_no_membership_change(
    client: &kube::Client,
    ns: &str,
    infra: &sim_infra::SimInfra,
    booted: &[(String, u64)],
    id: &str,
    history: usize,
) {
    assert_eq!(
        boots(client, ns, &infra.sim).await,
        booted,
        "no node booted again"
    );
    assert_eq!(
        infra.sim.etcd_history(id).len(),
        history,
        "no etcd membership change: {:?}",
        infra.sim.etcd_history(id)
    );
}
