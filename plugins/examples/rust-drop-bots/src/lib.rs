//! The smallest useful filter: drops Wikimedia canary events and edits made by bots.
use weir_sdk::prelude::*;

pub struct DropBots;

impl Plugin for DropBots {
    fn manifest() -> Manifest {
        Manifest::new(
            "drop-bots",
            "0.1.0",
            Kind::Filter,
            "Drops canary events and edits by bots",
        )
    }

    fn init(_config: &str) -> Result<(Self, Plan), String> {
        Ok((DropBots, Plan::new().reads(["meta.domain", "bot"])))
    }

    fn process(&mut self, event: &Event) -> Outcome {
        match (event.str(0), event.bool(1)) {
            (Some("canary"), _) => Outcome::drop("canary"),
            (_, Some(true)) => Outcome::drop("bot"),
            _ => Outcome::keep(),
        }
    }
}

export_plugin!(DropBots);
