//! Landlock for the jailed processes: once applied, the calling thread and the
//! threads it starts later can neither read, write, create nor execute any file,
//! whatever the chroot contains. Kernels without Landlock skip it.

use std::io;

use landlock::{Access, AccessFs, Ruleset, RulesetAttr, RulesetStatus, ABI};

/// Whether the kernel enforced the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforced {
    Fully,
    Partly,
    Not,
}

/// Denies every filesystem access right that the running kernel's Landlock
/// supports, with no exception. Call it after no_new_privs and before starting threads that must
/// be covered.
pub fn deny_all_files() -> io::Result<Enforced> {
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(ABI::V5))
        .and_then(|ruleset| ruleset.create())
        .and_then(|ruleset| ruleset.restrict_self())
        .map_err(io::Error::other)?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => Enforced::Fully,
        RulesetStatus::PartiallyEnforced => Enforced::Partly,
        RulesetStatus::NotEnforced => Enforced::Not,
    })
}
