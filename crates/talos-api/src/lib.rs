//! The Talos gRPC API subset talos-capi uses — our own .proto definitions with Talos's package,
//! service and message names and field numbers — and a client for it.
#![forbid(unsafe_code)]

pub mod client;
mod insecure;

pub use client::{
    AddressProblem, Client, Error, HumanDuration, NodeResult, Nodes, Observer, Source,
    machine_status,
};
pub use machineconfig::talosconfig::{Context, TalosConfig};

/// Generated from proto/common/common.proto.
#[allow(clippy::all, missing_debug_implementations)]
pub mod common {
    tonic::include_proto!("common");
}

/// Generated from proto/machine/machine.proto.
#[allow(clippy::all, missing_debug_implementations)]
pub mod machine {
    tonic::include_proto!("machine");
}

/// Generated from proto/google/rpc/status.proto.
#[allow(clippy::all, missing_debug_implementations)]
pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}
