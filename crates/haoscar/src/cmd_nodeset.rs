//! `haoscar nodeset`: fold, expand and count ClusterShell-style node sets,
//! like `cluset`/`nodeset`, with the same parser the configuration uses.

use anyhow::{Context, Result};
use haoscar_types::nodeset::NodeSet;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct NodesetArgs {
    /// Print the expanded names, one per line.
    #[arg(short = 'e', long, group = "mode")]
    pub expand: bool,
    /// Print the number of names.
    #[arg(short = 'c', long, group = "mode")]
    pub count: bool,
    /// Remove these names from the result (a node set).
    #[arg(short = 'x', long, value_name = "NODESET")]
    pub exclude: Vec<String>,
    /// Node sets, e.g. `node[01-16]` `n[1-4,7]`; their union is used.
    #[arg(required = true)]
    pub sets: Vec<String>,
}

pub fn run(args: NodesetArgs) -> Result<ExitCode> {
    let mut set = NodeSet::default();
    for s in &args.sets {
        set = set.union(&NodeSet::parse(s).with_context(|| format!("bad node set {s:?}"))?);
    }
    for s in &args.exclude {
        set = set.difference(&NodeSet::parse(s).with_context(|| format!("bad node set {s:?}"))?);
    }
    if args.count {
        println!("{}", set.len());
    } else if args.expand {
        for name in set.iter() {
            println!("{name}");
        }
    } else {
        println!("{}", set.fold());
    }
    Ok(ExitCode::SUCCESS)
}
