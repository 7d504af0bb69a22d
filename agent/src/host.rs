//! What this host offers to workloads, read with sysinfo.

use drover_proto::manifest::{parse_cpu, parse_memory};
use drover_proto::model::Resources;
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

use crate::error::Error;

/// Total CPU and memory of the host minus what is reserved for it.
pub fn capacity(reserved_cpu: &str, reserved_memory: &str) -> Result<Resources, Error> {
    let reserved = Resources {
        cpu_millis: parse_cpu(reserved_cpu)
            .map_err(|e| Error::Config(format!("reserved_cpu {reserved_cpu:?}: {e}")))?,
        memory_bytes: parse_memory(reserved_memory)
            .map_err(|e| Error::Config(format!("reserved_memory {reserved_memory:?}: {e}")))?,
    };
    let system = System::new_with_specifics(
        RefreshKind::nothing()
            .with_memory(MemoryRefreshKind::nothing().with_ram())
            .with_cpu(CpuRefreshKind::nothing()),
    )
    .map_err(|e| Error::Host(format!("reading host resources: {e}")))?;
    let total = Resources {
        cpu_millis: system.cpus().len() as u64 * 1000,
        memory_bytes: system.total_memory(),
    };
    Ok(total.minus(reserved))
}
