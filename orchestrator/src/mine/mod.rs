//! `swe-env mine`: new tasks from a repository's history (`history.rs`, git2 on the host) and from bugs injected
//! into working code (`mutate.py`, a stdlib-only script piped into a task container).

pub mod history;
