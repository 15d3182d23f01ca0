//! `cutover lock status | release`.

use anyhow::Result;

use super::shared::open_ledger;
use crate::cli::{Cli, LockCommand, Outcome};

pub async fn lock(cli: &Cli, cmd: &LockCommand) -> Result<Outcome> {
    match cmd {
        LockCommand::Status(target) => {
            let (_cfg, _t, ledger) = open_ledger(cli, target).await?;
            match ledger.lock_holder().await? {
                Some(h) if !h.expired => crate::outln!("held by {h}"),
                Some(h) if h.process_gone => crate::outln!(
                    "free: the holder's process is gone (pid {} on this host) — its lock of {h} is taken over by the next command",
                    h.pid
                ),
                Some(h) => crate::outln!("free (expired lock of {h})"),
                None => crate::outln!("free"),
            }
            Ok(Outcome::Success)
        }
        LockCommand::Release {
            target,
            confirm,
            force,
        } => {
            if !confirm {
                anyhow::bail!(
                    "refusing to release the lock without --confirm: if its holder is alive, a second run would start beside it"
                );
            }
            let (_cfg, _t, ledger) = open_ledger(cli, target).await?;
            if !force
                && let Some(h) = ledger.lock_holder().await?
                && h.alive_here
            {
                anyhow::bail!(
                    "refusing to release the lock: its holder is alive on this machine (pid {}: {h}); stop it (it releases the lock as it ends), or add --force to take the lock from it",
                    h.pid
                );
            }
            match ledger.force_release_lock().await? {
                Some(h) => crate::outln!("released the lock held by {h}"),
                None => crate::outln!("the lock was free"),
            }
            Ok(Outcome::Success)
        }
    }
}
