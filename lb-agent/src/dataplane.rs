//! Glue between the command line and the loader in [`crate::bpf`]. TEMPORARY STUB until the loader lands.
use std::path::Path;

use crate::cli::RunArgs;

pub struct Dataplane;

impl Dataplane {
    pub fn attach_pod(&mut self, _iface: &str) -> anyhow::Result<()> {
        anyhow::bail!("loader not integrated")
    }
}

pub fn start(_args: &RunArgs) -> anyhow::Result<Dataplane> {
    anyhow::bail!("loader not integrated")
}

pub fn uninstall(_bpffs: &Path) -> anyhow::Result<()> {
    anyhow::bail!("loader not integrated")
}
