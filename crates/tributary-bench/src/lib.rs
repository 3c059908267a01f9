//! `just bench`: drives the real pipeline (release binaries as separate
//! processes, real servers from the test kit) with simulated devices, and
//! measures throughput, freshness, CPU per row and memory, next to this
//! machine's own limits measured in the same run with the pipeline's own
//! messages (`RawEnvelope`, `MetricBatch`, device payloads).
//!
//! Never used by a service; never asserts speed (numbers are recorded in
//! BENCHMARKS.md, not checked in tests).

pub mod alerter;
pub mod limits;
pub mod measure;
pub mod nats_sync;
pub mod procs;
pub mod queries;
pub mod report;
pub mod run;
pub mod samples;
pub mod shapes;
pub mod sink_only;
