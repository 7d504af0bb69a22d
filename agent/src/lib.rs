//! Drover agent: manages one host's containers. Built in the agent issue; the crate exists so the workspace has its final shape.
