//! Execute: take the step the planner chose, one function per kind of step. Each returns the
//! step as it ended up: a step that cannot start yet becomes a Wait.
//!
//! The protocol of every step that asks a node is written once here: find the node, record
//! what is about to be asked on its Machine, ask, record the outcome, say it in an Event, and
//! wait for a node that does not answer ([`Exec::node`], [`waiting_for_node`], and each
//! record's [`Record`]).

mod config;
mod etcd;
mod scale;
mod upgrade;

use api::capi::{Cluster, Machine};
use api::controlplane::v1alpha3::TalosControlPlane;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::records::{self, ConfigChange, Upgrade};
use super::scope::MachineView;
use super::state::Ctx;
use super::status::Report;
use super::step::Step;
use super::wait_reason::WaitReason;
use super::{Annotation, annotate_machine, machines, talos};
use crate::{Error, report};

/// What the steps act with, besides the control plane and its machines.
pub(super) struct Act<'a> {
    pub talosconfig: Option<&'a str>,
    /// The in-place Talos upgrade target, if any.
    pub upgrade: Option<super::upgrade::Target>,
    /// The infrastructure template, when it could be read this reconcile.
    pub template: Option<machines::Template>,
    pub cluster: &'a Cluster,
    /// The digest of controlPlaneConfig now.
    pub config_digest: &'a str,
    /// rolloutStrategy.configReboot is InPlace.
    pub reboot_in_place: bool,
}

/// One step's execution: the control plane, its machines, what they act with, and the report
/// the step's outcome goes into.
struct Exec<'a, 'r> {
    ctx: &'a Ctx,
    tcp: &'a TalosControlPlane,
    cluster: &'a str,
    machines: &'a [Machine],
    with: Act<'a>,
    report: &'r mut Report,
}

/// A node to ask: its Machine, its address and the cluster's talosconfig.
struct Node<'a> {
    machine: &'a Machine,
    address: String,
    talosconfig: &'a str,
}

/// Take `step`; returns the step as it ended up.
pub(super) async fn act(
    ctx: &Ctx,
    tcp: &TalosControlPlane,
    cluster: &str,
    machines: &[Machine],
    with: Act<'_>,
    step: Step,
    report: &mut Report,
) -> Result<Step, Error> {
    let mut x = Exec {
        ctx,
        tcp,
        cluster,
        machines,
        with,
        report,
    };
    let waited = match &step {
        Step::CreateMachine {
            failure_domain,
            limit,
        } => scale::create(&x, failure_domain.as_deref(), *limit).await?,
        Step::ScaleDown { machine } => scale::down(&x, machine).await?,
        Step::Remediate {
            machine,
            retry_count,
        } => scale::remediate(&mut x, machine, *retry_count).await?,
        Step::BootstrapEtcd { machine } => etcd::bootstrap(&mut x, machine).await?,
        Step::RemoveOrphanMember { id, name } => etcd::remove_orphan(&x, *id, name).await?,
        Step::ReleaseMachine { machine, member } => etcd::release(&x, machine, *member).await?,
        Step::UpgradeTalos { machine } => upgrade::start(&x, machine).await?,
        Step::UpgradeSeenDown { machine } => x.seen_down::<Upgrade>(machine).await?,
        Step::UpgradeFailed { machine, why } => upgrade::failed(&x, machine, why).await?,
        Step::UpgradeDone { machine } => upgrade::done(&x, machine).await?,
        Step::ForgetUpgrade { machine } => x.forget::<Upgrade>(machine).await?,
        Step::TryConfig { machine } => config::try_it(&x, machine).await?,
        Step::ConfirmConfig { machine } => config::confirm(&x, machine).await?,
        Step::RebootConfig { machine } => config::reboot(&x, machine).await?,
        Step::ConfigRebootSeenDown { machine } => x.seen_down::<ConfigChange>(machine).await?,
        Step::ConfigChangeFailed { machine, why } => config::failed(&x, machine, why).await?,
        Step::ForgetConfigChange { machine } => x.forget::<ConfigChange>(machine).await?,
        Step::Wait { .. } | Step::Steady => None,
    };
    Ok(waited.unwrap_or(step))
}

/// The one Wait for a node that did not answer: the next look asks again.
fn waiting_for_node(message: String) -> Option<Step> {
    Some(Step::Wait {
        reason: WaitReason::WaitingForNode,
        message,
    })
}

impl<'a> Exec<'a, '_> {
    fn machine(&self, name: &str) -> Option<&'a Machine> {
        self.machines.iter().find(|m| m.name_any() == name)
    }

    /// The node of machine `name`, when it has an address and the cluster a talosconfig;
    /// otherwise the step waits for the next reconcile, which finds them.
    fn node(&self, name: &str) -> Option<Node<'a>> {
        let machine = self.machine(name)?;
        Some(Node {
            address: talos::address(machine)?,
            talosconfig: self.with.talosconfig?,
            machine,
        })
    }

    /// Machine `name` as the model sees it.
    fn view(&self, name: &str) -> Option<&MachineView> {
        self.report.view.machines.iter().find(|v| v.name == name)
    }

    /// What is recorded on machine `name` of record `R`, as observed.
    fn recorded<R: Record>(&self, name: &str) -> Option<R> {
        self.view(name).and_then(R::of_view)
    }

    /// The node of `machine`, under change `R`, was seen down (rebooting).
    async fn seen_down<R: Record>(&self, machine: &str) -> Result<Option<Step>, Error> {
        if let Some(mut record) = self.recorded::<R>(machine) {
            record.seen_down();
            self.record(machine, Some(&record)).await?;
        }
        Ok(None)
    }

    /// Change `R` of `machine` failed for `why`: recorded, which halts the changes of its
    /// kind, and said in a Warning Event (`note`, from the record).
    async fn failed<R: Record>(
        &self,
        machine: &str,
        why: &str,
        note: impl FnOnce(&R) -> String,
    ) -> Result<Option<Step>, Error> {
        if let Some(mut record) = self.recorded::<R>(machine) {
            record.failed(why.to_owned());
            self.record(machine, Some(&record)).await?;
            self.event(EventType::Warning, R::FAILED, note(&record))
                .await;
        }
        Ok(None)
    }

    /// The record `R` on `machine` goes.
    async fn forget<R: Record>(&self, machine: &str) -> Result<Option<Step>, Error> {
        self.record::<R>(machine, None).await?;
        Ok(None)
    }

    /// Record (or, with `None`, remove) `record` on machine `name`.
    async fn record<R: Record>(&self, name: &str, record: Option<&R>) -> Result<(), Error> {
        annotate_machine(
            self.ctx,
            self.tcp,
            name,
            json!({R::ANNOTATION: record.map(Annotation::to_annotation)}),
            R::WHAT,
        )
        .await
    }

    async fn event(&self, kind: EventType, reason: &'static str, note: String) {
        report::event(self.ctx, &self.tcp.object_ref(&()), kind, reason, &note).await;
    }

    async fn said(&self, reason: &'static str, note: String) {
        self.event(EventType::Normal, reason, note).await;
    }

    fn name(&self) -> String {
        self.tcp.name_any()
    }
}

/// A record of a change under way on a Machine, kept in one of its annotations.
trait Record: Annotation + Clone {
    const ANNOTATION: &'static str;
    /// For the error when it cannot be written: "<WHAT> machine ns/name".
    const WHAT: &'static str;
    /// The reason of the Event that says it failed.
    const FAILED: &'static str;
    fn of_view(view: &MachineView) -> Option<Self>;
    fn seen_down(&mut self);
    fn failed(&mut self, why: String);
}

impl Record for Upgrade {
    const ANNOTATION: &'static str = records::UPGRADE;
    const WHAT: &'static str = "recording the Talos upgrade of";
    const FAILED: &'static str = "TalosUpgradeFailed";
    fn of_view(view: &MachineView) -> Option<Self> {
        view.upgrade.clone()
    }
    fn seen_down(&mut self) {
        self.down = true;
    }
    fn failed(&mut self, why: String) {
        self.failed = Some(why);
    }
}

impl Record for ConfigChange {
    const ANNOTATION: &'static str = records::CONFIG_CHANGE;
    const WHAT: &'static str = "recording the configuration change of";
    const FAILED: &'static str = "TalosConfigChangeFailed";
    fn of_view(view: &MachineView) -> Option<Self> {
        view.reconfigure.clone()
    }
    fn seen_down(&mut self) {
        self.down = true;
    }
    fn failed(&mut self, why: String) {
        self.failed = Some(why);
    }
}
