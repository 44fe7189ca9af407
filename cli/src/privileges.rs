//! Dropping root for the daemon: local mode runs as the Postgres user, because the files
//! it creates are the ones Postgres runs on, and Postgres refuses to run as root.

use anyhow::Context as _;
use nix::unistd::{setgid, setgroups, setuid, Gid, Uid, User};
use ramify_compute::PgUser;

/// Becomes `user` for good (groups, gid, then uid) when running as root; a no-op
/// otherwise. Call before any thread is started: it also sets HOME, USER and LOGNAME.
pub fn become_user(user: &PgUser) -> anyhow::Result<()> {
    if !user.switches_user() {
        return Ok(());
    }
    let (uid, gid) = (Uid::from_raw(user.uid()), Gid::from_raw(user.gid()));
    let home = User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.dir)
        .unwrap_or_else(|| "/".into());
    let name = user.name();
    setgroups(&[gid]).with_context(|| format!("cannot drop supplementary groups for `{name}`"))?;
    setgid(gid).with_context(|| format!("cannot switch to group {gid} of `{name}`"))?;
    setuid(uid).with_context(|| format!("cannot switch to user `{name}`"))?;
    // root's working directory (often /root) is closed to the user.
    std::env::set_current_dir("/").context("cannot change to /")?;
    std::env::set_var("HOME", home);
    std::env::set_var("USER", name);
    std::env::set_var("LOGNAME", name);
    Ok(())
}
