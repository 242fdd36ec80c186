//! `selves demo`: three real nodes in a temporary directory, a hub serving
//! HTTPS on loopback and two spokes paired with it, syncing real rows
//! through real SQLite files, and a knowledge folder edited on two of
//! them. Narrates what happens and checks the result.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use clap::Args;
use selves_client::{NoProgress, PeerClient, SyncOptions, SyncReport};
use selves_server::{DEFAULT_LIMITS, DEFAULT_MEMEX_RATES, DEFAULT_RATE, ServerConfig};
use selves_store::{CaptureOptions, Layout, SearchQuery, Share, ShareMode, Store};
use selves_wire::pair::PairBlob;
use selves_wire::{ConversationMeta, Row};

use crate::commands::peers::{mint_invite, remote_from_blob, target};
use crate::home::{self, Home};
use crate::output::now_ms;

#[derive(Args)]
pub struct DemoArgs {
    /// Keep the nodes in this directory (inspect them afterwards with --home DIR/laptop)
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Generated messages the laptop brings, to watch a bigger sync
    #[arg(long, default_value_t = 2000)]
    rows: u32,
}

struct Node {
    home: Home,
    store: Arc<Store>,
    engine: Arc<selves_share::Engine>,
}

impl Node {
    fn new(base: &std::path::Path, name: &str, role: &str, location: &str) -> anyhow::Result<Node> {
        let home = home::init(&base.join(name), name.parse()?)?;
        let store = home.open_store()?;
        crate::identity::write_own(&store, |card| {
            card.role = role.to_owned();
            card.location = location.to_owned();
        })?;
        let engine = home.open_engine(&store)?;
        Ok(Node {
            home,
            store,
            engine,
        })
    }

    fn name(&self) -> String {
        self.home.name().to_string()
    }

    /// One sync round with the vps.
    async fn sync(&self, vps: &PeerClient) -> anyhow::Result<SyncReport> {
        let opts = SyncOptions::default();
        Ok(selves_client::sync(self.store.clone(), &self.engine, vps, &opts, &NoProgress).await?)
    }

    fn capture(&self, rows: Vec<Row>) -> anyhow::Result<u64> {
        let s = self.store.capture(
            rows,
            &CaptureOptions {
                stamp_origin: Some(self.name()),
                ..CaptureOptions::default()
            },
        )?;
        Ok(s.inserted + s.updated)
    }
}

fn message(conv: &str, msg: &str, role: &str, text: &str, ts: i64) -> Row {
    Row {
        source: "claude-code".into(),
        conversation_id: conv.into(),
        msg_id: Some(msg.into()),
        uuid: None,
        role: role.into(),
        sender: None,
        text: text.into(),
        ts,
        edited_at: None,
        channel: None,
        metadata: None,
        origin: None,
        conversation: Some(ConversationMeta {
            title: Some(format!("demo {conv}")),
            first_ts: Some(ts),
            last_ts: Some(ts),
            project_path: None,
            parent_conversation_id: None,
        }),
    }
}

/// Filler messages in many conversations, deterministic.
fn generated(n: u32) -> Vec<Row> {
    const WORDS: &[&str] = &[
        "memory",
        "sync",
        "tunnel",
        "vps",
        "laptop",
        "merge",
        "record",
        "head",
        "digest",
        "conversation",
        "agent",
        "telegram",
        "termux",
        "container",
        "привет",
        "記憶",
        "🙂",
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|i| {
            let mut text = String::new();
            for _ in 0..(8 + i % 40) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                text.push_str(WORDS[(seed % WORDS.len() as u64) as usize]);
                text.push(' ');
            }
            message(
                &format!("bulk-{}", i % 97),
                &format!("bulk-{i}"),
                if i % 2 == 0 { "user" } else { "assistant" },
                text.trim_end(),
                1_716_800_000 + i64::from(i),
            )
        })
        .collect()
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let tmp;
    let base = match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dir
        }
        None => {
            tmp = tempfile::Builder::new().prefix("selves-demo-").tempdir()?;
            tmp.path().to_owned()
        }
    };
    let started = Instant::now();
    println!("selves demo: three nodes in {}\n", base.display());

    println!("1. create the nodes (id, name, self-signed TLS certificate, SQLite store)");
    let vps = Node::new(&base, "vps", "the hub every node syncs through", "a VPS")?;
    let laptop = Node::new(&base, "laptop", "daily work in the terminal", "a laptop")?;
    let phone = Node::new(&base, "phone", "voice notes on the go", "Android (Termux)")?;
    for n in [&vps, &laptop, &phone] {
        println!(
            "   {:<7} {}  certificate {}",
            n.name(),
            n.home.config.node.id.short(),
            &n.home.fingerprint()?.to_string()[..30]
        );
    }

    let rt = crate::runtime()?;
    rt.block_on(async {
        println!(
            "\n2. the vps serves HTTPS on loopback; laptop and phone pair with one pasted line each"
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let config = ServerConfig {
            tls: selves_server::tls_config(vps.home.certificate()?, vps.home.private_key()?)?,
            limits: DEFAULT_LIMITS,
            rate: DEFAULT_RATE,
            memex: DEFAULT_MEMEX_RATES,
            header_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(300),
            max_connections: 64,
            software: concat!("selves ", env!("CARGO_PKG_VERSION")).to_owned(),
            changes: None,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(selves_server::run(
            listener,
            vps.store.clone(),
            vps.engine.clone(),
            config,
            async {
                let _ = stopped.await;
            },
        ));
        println!("   vps listening on https://{addr}");
        let mut clients = Vec::new();
        for spoke in [&laptop, &phone] {
            let blob = mint_invite(
                &vps.home,
                &vps.store,
                spoke.home.name(),
                &addr.ip().to_string(),
                addr.port(),
                Duration::from_secs(600),
            )?;
            println!(
                "   vps: selves invite --peer {} → {}…",
                spoke.name(),
                &blob[..40]
            );
            let decoded = PairBlob::decode(&blob, now_ms() / 1000)?;
            let remote = remote_from_blob(&decoded, "vps".parse()?);
            spoke.store.add_remote(&remote, false)?;
            println!(
                "   {}: selves pair … → pinned to {}…",
                spoke.name(),
                &decoded.cert_fp.to_string()[..30]
            );
            clients.push(PeerClient::new(target(&remote, &spoke.store))?);
        }
        let (laptop_client, phone_client) = (&clients[0], &clients[1]);

        println!("\n3. each node captures its own memory, offline");
        let mut notes = vec![
            message(
                "chat-1",
                "1",
                "user",
                "Remember: the staging database moved to port 5433.",
                1_716_900_000,
            ),
            message(
                "chat-1",
                "2",
                "assistant",
                "Noted. Staging Postgres now listens on 5433.",
                1_716_900_010,
            ),
        ];
        notes.extend(generated(args.rows));
        let n = laptop.capture(notes)?;
        println!("   laptop captured {n} messages (its Claude Code sessions)");
        let n = phone.capture(vec![
            message(
                "tg-7",
                "1",
                "user",
                "Leo fell asleep after the dragon story.",
                1_716_950_000,
            ),
            message(
                "tg-7",
                "2",
                "assistant",
                "Good night, Leo. Next time: the lighthouse.",
                1_716_950_020,
            ),
        ])?;
        println!("   phone captured {n} messages (its Telegram bot)");

        println!("\n4. sync: laptop ↔ vps, then phone ↔ vps (the phone never talks to the laptop)");
        let r = laptop.sync(laptop_client).await?;
        say("laptop", &r);
        let r = phone.sync(phone_client).await?;
        say("phone", &r);
        let r = laptop.sync(laptop_client).await?;
        say("laptop", &r);

        println!("\n5. the same message edited on two machines at once");
        let mut on_laptop = message(
            "chat-1",
            "2",
            "assistant",
            "Noted. Staging Postgres now listens on 5433 (laptop edit).",
            1_716_900_010,
        );
        on_laptop.edited_at = Some(now_ms());
        // Provenance stays with the node that captured the message.
        on_laptop.origin = Some("laptop".into());
        let mut on_phone = on_laptop.clone();
        on_phone.text =
            "Noted. Staging Postgres listens on 5433; prod stays on 5432 (phone edit).".into();
        on_phone.edited_at = Some(now_ms() + 1);
        laptop.capture(vec![on_laptop])?;
        phone.capture(vec![on_phone])?;
        for _ in 0..2 {
            laptop.sync(laptop_client).await?;
            phone.sync(phone_client).await?;
        }
        for n in [&laptop, &vps, &phone] {
            let row = n
                .store
                .get_row("claude-code", "chat-1", "2")?
                .context("the edited row exists")?;
            println!("   {:<7} holds: {}", n.name(), row.text);
        }

        println!("\n6. a knowledge folder edited on two machines (share `knowledge`, two-way)");
        let nodes = [(&laptop, laptop_client), (&phone, phone_client)];
        let mut folders = Vec::new();
        for n in [&vps, &laptop, &phone] {
            let dir = base.join(format!("{}-knowledge", n.name()));
            std::fs::create_dir_all(&dir)?;
            let share = n.store.add_share(
                &"knowledge".parse()?,
                std::fs::canonicalize(&dir)?,
                ShareMode::TwoWay,
                Layout::Flat,
                now_ms(),
            )?;
            folders.push((n, share, dir));
        }
        let note = |n: usize| folders[n].2.join("infra.md");
        std::fs::write(
            note(1),
            "# Infra\n\nstaging db: port 5433\nbackups: nightly\nprod db: port 5432\n",
        )?;
        knowledge_round(&folders, &nodes).await?;
        println!("   laptop wrote infra.md; after a sync the phone has it too");
        edit(&note(1), "staging db: port 5433", "staging db: port 6543")?;
        edit(
            &note(2),
            "prod db: port 5432",
            "prod db: port 5432 (read replica on 5434)",
        )?;
        knowledge_round(&folders, &nodes).await?;
        println!("   laptop and phone edit lines 3 and 5 of it at once: merged on every node");
        for line in std::fs::read_to_string(note(0))?.lines().skip(2) {
            println!("     vps infra.md │ {line}");
        }
        edit(
            &note(1),
            "backups: nightly",
            "backups: nightly, kept 30 days",
        )?;
        edit(&note(2), "backups: nightly", "backups: hourly")?;
        knowledge_round(&folders, &nodes).await?;
        println!("   both change the same line: one stays, the other is kept beside it");
        for (n, share, _) in &folders {
            let files = n.store.share_files(share)?;
            let names: Vec<&str> = files
                .iter()
                .filter(|f| !f.version.deleted)
                .map(|f| f.version.path.as_str())
                .collect();
            println!("     {:<7} {}", n.name(), names.join("  "));
            ensure!(
                names.len() == 2,
                "{} should hold the note and one conflict copy",
                n.name()
            );
        }
        let held = |n: usize| -> anyhow::Result<Vec<(String, Vec<u8>)>> {
            let mut files = Vec::new();
            for e in std::fs::read_dir(&folders[n].2)? {
                let e = e?;
                files.push((
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path())?,
                ));
            }
            files.sort();
            Ok(files)
        };
        ensure!(
            held(0)? == held(1)? && held(1)? == held(2)?,
            "the three knowledge folders should hold the same files"
        );

        println!("\n7. search on the phone for what the laptop learned");
        let hits = phone.store.search(&SearchQuery {
            text: "staging 5433".into(),
            origin: Some("laptop".into()),
            limit: 3,
            since: None,
            ..SearchQuery::default()
        })?;
        for h in &hits {
            println!(
                "   [{}] {}: {}",
                h.row.origin.as_deref().unwrap_or("?"),
                h.row.role,
                h.snippet
            );
        }
        ensure!(!hits.is_empty(), "the phone should find the laptop's note");

        println!("\n8. verify: heads and an order-independent digest of the memory");
        let (vh, vd) = vps.store.digest()?;
        for n in [&laptop, &phone] {
            let (h, d) = n.store.digest()?;
            ensure!(
                h == vh && d == vd,
                "{} has not converged with the vps",
                n.name()
            );
            println!(
                "   {:<7} = vps: {} rows, {} conversations, digest {}",
                n.name(),
                d.rows,
                d.conversations,
                &d.digest[..16]
            );
        }
        println!("\n9. who is who: every node's card reached every node; each renders SELVES.md");
        for n in [&vps, &laptop, &phone] {
            crate::identity::write_pages(&n.store, &n.engine)?;
        }
        let page = std::fs::read_to_string(folders[2].2.join(crate::identity::PAGE))?;
        for line in page
            .lines()
            .filter(|l| l.starts_with("## ") || l.contains("**Role:**"))
        {
            println!("   phone SELVES.md │ {line}");
        }
        ensure!(
            page.matches("\n## ").count() == 3,
            "the phone's SELVES.md should list all three nodes"
        );

        let _ = stop.send(());
        server.await??;
        anyhow::Ok(())
    })?;
    println!(
        "\nall three nodes converged in {:.1} s. Try it for real: README.md, \"Two machines\".",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Captures each spoke's folder, then syncs laptop, phone, laptop through
/// the vps: what one spoke changed reaches the other.
async fn knowledge_round(
    folders: &[(&Node, Share, PathBuf)],
    spokes: &[(&Node, &PeerClient); 2],
) -> anyhow::Result<()> {
    for (n, share, _) in folders {
        n.engine.scan(share, false, now_ms())?;
    }
    for (n, client) in [spokes[0], spokes[1], spokes[0]] {
        let r = n.sync(client).await?;
        if let Some(e) = r.shares.iter().find_map(|s| s.error.as_ref()) {
            anyhow::bail!("{}: share sync stopped: {e}", n.name());
        }
    }
    Ok(())
}

/// Replaces one line of a note, as an editor would.
fn edit(path: &std::path::Path, line: &str, with: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)?;
    ensure!(text.contains(line), "{} lacks {line:?}", path.display());
    std::fs::write(path, text.replacen(line, with, 1))?;
    Ok(())
}

fn say(who: &str, r: &SyncReport) {
    println!(
        "   {who:<7} ↔ vps: pulled {:>5}, pushed {:>5} records in {:>4} ms",
        r.pulled, r.pushed, r.elapsed_ms
    );
}
