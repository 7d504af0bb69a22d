//! Drover's contracts: the gRPC services between processes (`drover.v1`), the domain types
//! every crate reasons about, the conversions between the two, and the manifest formats.

pub mod convert;
pub mod gossip;
pub mod manifest;
pub mod model;

/// Generated wire types and gRPC stubs of package `drover.v1`.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod pb {
    tonic::include_proto!("drover.v1");
}
