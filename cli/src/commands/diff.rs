//! `ramify diff A [B]`: schema (and with --data, row) differences between two branches.
//!
//! A is the "before" side (`-`), B the "after" side (`+`); without B, A's parent is the
//! "before" side and A the "after" one. `NAME@WHEN` reads a point of a branch's history
//! from a throwaway branch forked there, deleted afterwards.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use super::Context;
use crate::args::{BranchRef, DiffArgs, OutputFormat};
use crate::backend::{Backend, Reach};
use anyhow::{bail, Context as _};
use ramify_diff::{DataDiffOptions, DiffOptions, RenderOptions};

/// Exit status when the branches differ and --exit-code was given.
const DIFFER: u8 = 1;
/// Exit status of every error, so that it is never taken for "differ".
const ERROR: u8 = 2;

/// How long a throwaway branch for `NAME@WHEN` lives if `ramify` is killed before it
/// can delete it.
const SCRATCH_TTL_SECS: u64 = 3600;

/// Runs the diff; errors are printed here (one line) and exit with 2.
pub async fn run(ctx: &Context, backend: &dyn Backend, args: DiffArgs) -> ExitCode {
    match diff(ctx, backend, args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", crate::error_line(&e));
            ExitCode::from(ERROR)
        }
    }
}

/// The two sides in the order they are compared: (before, after).
pub fn sides(
    a: BranchRef,
    b: Option<BranchRef>,
    a_parent: Option<&str>,
) -> anyhow::Result<(BranchRef, BranchRef)> {
    match b {
        Some(b) => Ok((a, b)),
        None => match a_parent {
            Some(parent) => Ok((
                BranchRef {
                    name: parent.to_string(),
                    at: None,
                    label: parent.to_string(),
                },
                a,
            )),
            None => bail!(
                "branch {} is a root and has no parent to compare with: name the other branch (ramify diff OTHER {})",
                a.name,
                a.label
            ),
        },
    }
}

async fn diff(ctx: &Context, backend: &dyn Backend, args: DiffArgs) -> anyhow::Result<ExitCode> {
    let a_parent = match &args.b {
        Some(_) => None,
        None => backend.parent_of(&args.a.name).await?,
    };
    let (before, after) = sides(args.a, args.b, a_parent.as_deref())?;

    let mut scratch = Vec::new();
    let result = async {
        // Both kept until the diff is done: on a cluster each holds a port-forward.
        let before_side = side(backend, &before, &mut scratch).await?;
        let after_side = side(backend, &after, &mut scratch).await?;
        let (mut a, mut b) = tokio::try_join!(
            ramify_diff::connect(&before_side.conn.uri),
            ramify_diff::connect(&after_side.conn.uri)
        )?;
        for (r, s) in [(&before, &before_side), (&after, &after_side)] {
            if r.at.is_none() && s.was_suspended {
                eprintln!("woke {}", r.name);
            }
        }
        let opts = DiffOptions {
            data: args.data.then(DataDiffOptions::default),
        };
        Ok::<_, anyhow::Error>(ramify_diff::diff_databases(&mut a, &mut b, &opts).await?)
    }
    .await;
    for name in scratch {
        if let Err(e) = backend.delete_scratch(&name).await {
            eprintln!(
                "warning: could not delete the throwaway branch {name}: {}; it expires within the hour and is deleted then anyway",
                crate::error_line(&e)
            );
        }
    }
    let report = result?;

    let render = RenderOptions {
        a_label: before.label.clone(),
        b_label: after.label.clone(),
        context: args.unified,
        color: ctx.output == OutputFormat::Table
            && std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none(),
    };
    match ctx.output {
        // Identical: no output at all (the data section would still print its summary).
        OutputFormat::Table | OutputFormat::Wide if report.is_empty() => {}
        OutputFormat::Table | OutputFormat::Wide => print!("{}", report.render(&render)),
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report.to_json(&render))?
        ),
        OutputFormat::Yaml => print!("{}", serde_yaml::to_string(&report.to_json(&render))?),
    }
    Ok(if args.exit_code && !report.is_empty() {
        ExitCode::from(DIFFER)
    } else {
        ExitCode::SUCCESS
    })
}

/// One side, reachable from here: the branch itself, or a throwaway branch forked from it
/// at `r.at` (its name pushed on `scratch` for deletion).
async fn side(
    backend: &dyn Backend,
    r: &BranchRef,
    scratch: &mut Vec<String>,
) -> anyhow::Result<Reach> {
    let Some(at) = &r.at else {
        return backend.reach(&r.name, 0).await;
    };
    let name = super::run::branch_name("diff")?;
    backend
        .create_scratch(&name, &r.name, Some(at), SCRATCH_TTL_SECS)
        .await
        .with_context(|| format!("cannot read {} at {at}", r.name))?;
    scratch.push(name.clone());
    backend.reach(&name, 0).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str) -> BranchRef {
        BranchRef {
            name: name.into(),
            at: None,
            label: name.into(),
        }
    }

    #[test]
    fn one_branch_is_compared_with_its_parent_as_the_before_side() {
        let (before, after) = sides(r("dev"), None, Some("main")).unwrap();
        assert_eq!((before.name.as_str(), after.name.as_str()), ("main", "dev"));
    }

    #[test]
    fn two_branches_keep_their_order() {
        let (before, after) = sides(r("main"), Some(r("dev")), Some("x")).unwrap();
        assert_eq!((before.name.as_str(), after.name.as_str()), ("main", "dev"));
    }

    #[test]
    fn a_root_alone_is_a_clear_error() {
        let err = sides(r("main"), None, None).unwrap_err().to_string();
        assert!(err.contains("is a root"), "{err}");
    }
}
