//! The syscall layer: every `unsafe` block in tlsplice is in this module, and each
//! states the invariant it relies on in a `// SAFETY:` comment.

pub mod ktls;
