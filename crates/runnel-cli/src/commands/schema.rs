//! `runnel schema snapshot|check|asyncapi`: event schema snapshots, the backward-
//! compatibility check and the AsyncAPI document, on files (see `runnel::catalog`).

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use runnel::catalog::{compare, Catalog, SchemaSnapshot, SNAPSHOT_BYTES_MAX};

use crate::cli::SchemaCommand;
use crate::exit::{BadInput, BrokenPipe, Incompatible};

/// Runs one `schema` command.
pub fn run(command: SchemaCommand) -> anyhow::Result<()> {
    match command {
        SchemaCommand::Snapshot(args) => {
            let snapshot = SchemaSnapshot::read(&args.catalog)?;
            snapshot.write(&args.out)?;
            eprintln!(
                "wrote the schemas of {} event types to {}",
                snapshot.events.len(),
                args.out.display()
            );
            Ok(())
        }
        SchemaCommand::Check(args) => {
            let previous = SchemaSnapshot::read(&args.snapshot)?;
            let current = SchemaSnapshot::read(&args.current)?;
            let report = compare(&previous, &current);
            print(&format!("{report}\n"))?;
            if report.is_compatible() {
                Ok(())
            } else {
                Err(Incompatible(report.problems.len()).into())
            }
        }
        SchemaCommand::Asyncapi(args) => {
            let catalog = read_catalog(&args.catalog)?;
            let doc = catalog.asyncapi(&args.title, &args.app_version);
            print(&format!("{}\n", serde_json::to_string_pretty(&doc)?))
        }
    }
}

fn read_catalog(path: &Path) -> anyhow::Result<Catalog> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if len > SNAPSHOT_BYTES_MAX {
        return Err(BadInput(format!(
            "{} is larger than {SNAPSHOT_BYTES_MAX} bytes",
            path.display()
        ))
        .into());
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        BadInput(format!(
            "{} is not a catalog (the JSON of GET /catalog): {e}",
            path.display()
        ))
        .into()
    })
}

fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(BrokenPipe.into()),
        other => Ok(other?),
    }
}
