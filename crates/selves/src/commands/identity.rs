//! `identity`, `identity set`: what this node says of itself, and what it
//! knows of every other node.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Subcommand};
use selves_wire::card::check_field;

use crate::home::Home;
use crate::identity;
use crate::output::{self, ago};

#[derive(Subcommand)]
pub enum IdentityCommand {
    /// Every node this node knows: name, role, location, interface, last sync
    Show {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Say what this node is: its card syncs to every node
    Set(CardArgs),
    /// Print the SELVES.md page as this node renders it
    Page,
}

/// The fields of a node card; an empty value clears one.
#[derive(Args, Default)]
pub struct CardArgs {
    /// What this node is for, e.g. "conversations with users on Telegram"
    #[arg(long)]
    pub role: Option<String>,
    /// Where it runs, e.g. "Hetzner VPS, Falkenstein" or "Android phone (Termux)"
    #[arg(long)]
    pub location: Option<String>,
    /// How one talks to it, e.g. "terminal", "Telegram bot"
    #[arg(long)]
    pub interface: Option<String>,
}

impl CardArgs {
    pub fn is_empty(&self) -> bool {
        self.role.is_none() && self.location.is_none() && self.interface.is_none()
    }

    /// Checks the values before anything is written.
    pub fn check(&self) -> anyhow::Result<()> {
        for (what, value) in [
            ("--role", &self.role),
            ("--location", &self.location),
            ("--interface", &self.interface),
        ] {
            if let Some(v) = value {
                check_field(what, v).map_err(anyhow::Error::msg)?;
            }
        }
        Ok(())
    }
}

/// Writes this node's card with `args` applied (and the software and last
/// sync brought up to date).
pub fn write_card(store: &selves_store::Store, args: CardArgs) -> anyhow::Result<()> {
    args.check()?;
    identity::write_own(store, |card| {
        if let Some(v) = args.role {
            card.role = v.trim().to_owned();
        }
        if let Some(v) = args.location {
            card.location = v.trim().to_owned();
        }
        if let Some(v) = args.interface {
            card.interface = v.trim().to_owned();
        }
    })?;
    Ok(())
}

pub fn identity(home: Option<PathBuf>, cmd: Option<IdentityCommand>) -> anyhow::Result<()> {
    let home = Home::load(Home::locate(home)?)?;
    let store = home.open_store()?;
    match cmd.unwrap_or(IdentityCommand::Show { json: false }) {
        IdentityCommand::Set(args) => {
            if args.is_empty() {
                bail!("nothing to set: pass --role, --location or --interface");
            }
            write_card(&store, args)?;
            let card = store.own_card()?.expect("just written");
            println!(
                "{}: role {:?}, location {:?}, interface {:?}",
                card.name, card.role, card.location, card.interface
            );
            eprintln!("every node learns it at its next sync (the daemon syncs at once)");
            Ok(())
        }
        IdentityCommand::Page => {
            print!("{}", identity::page(&store)?);
            Ok(())
        }
        IdentityCommand::Show { json } => {
            let cards = store.cards()?;
            if json {
                return output::print_json(&cards);
            }
            if !cards.iter().any(|c| c.id == store.me().id) {
                println!(
                    "{} (this node) has no card yet: `selves identity set --role … --location …`",
                    store.me().name
                );
            }
            for card in &cards {
                let this = if card.id == store.me().id {
                    " (this node)"
                } else {
                    ""
                };
                println!("{}{this}", card.name);
                for (label, value) in [
                    ("role", &card.role),
                    ("location", &card.location),
                    ("interface", &card.interface),
                ] {
                    if !value.is_empty() {
                        println!("  {label:<10} {value}");
                    }
                }
                let sync = card.last_sync_at.map_or("never".to_owned(), ago);
                println!(
                    "  {:<10} {sync} (card written {})",
                    "last sync",
                    ago(card.updated_at)
                );
            }
            Ok(())
        }
    }
}
