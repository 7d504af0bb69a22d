//! Autoscaling. [`hpa`] is the Kubernetes HorizontalPodAutoscaler's algorithm as pure
//! functions (the replica calculation per metric, then stabilisation windows and scaling
//! policies), so that a recorded metric trace gives the replica sequence Kubernetes would.

pub mod controller;
pub mod hpa;
pub mod resize;
pub mod vpa;

pub use controller::Autoscalers;
