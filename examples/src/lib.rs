//! Shared bits of the example pipelines (none yet: each example is self-contained).
