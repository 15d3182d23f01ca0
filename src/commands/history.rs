//! `cutover history`: the runs the ledger holds.

use anyhow::Result;

use super::shared::open_ledger;
use crate::cli::{Cli, HistoryArgs, Outcome};
use crate::monitor::report::format_ms;

pub async fn history(cli: &Cli, args: &HistoryArgs) -> Result<Outcome> {
    let (_cfg, _target, ledger) = open_ledger(cli, &args.target).await?;
    let runs = ledger
        .runs_newest_first(args.limit.max(1), args.status.as_deref())
        .await?;
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(Outcome::Success);
    }
    crate::outln!(
        "{:>4}  {:<26} {:<24} {:>9} {:>10} {:>9} {:>9}  {:<22} entities",
        "#",
        "run",
        "started",
        "duration",
        "read",
        "written",
        "rejected",
        "status"
    );
    for r in runs {
        crate::outln!(
            "{:>4}  {:<26} {:<24} {:>9} {:>10} {:>9} {:>9}  {:<22} {}",
            r.run_number,
            r.run_id,
            r.started_at.as_deref().unwrap_or("-"),
            format_ms(r.duration_ms.max(0) as u64),
            r.read,
            r.written,
            r.rejected,
            r.status,
            r.entities.join(",")
        );
    }
    Ok(Outcome::Success)
}
