//! `SELVES_HOME`: the node's identity (id, name, TLS certificate and key),
//! its config and its store. Every file here is private (0600) from its
//! first byte, and written whole (temp file, fsync, rename, fsync dir).

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use selves_store::{Store, StorePaths};
use selves_wire::sign::NodeKey;
use selves_wire::{CertFingerprint, Name, NodeId};
use serde::{Deserialize, Serialize};

pub const DEFAULT_PORT: u16 = 8765;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub node: NodeSection,
    #[serde(default)]
    pub server: ServerSection,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeSection {
    pub id: NodeId,
    /// The node's name: its `origin` label on what it captures.
    pub name: Name,
}

/// Server settings; every field is optional and has a default.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Address `serve` listens on when `--listen` is not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_push_records: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pull_records: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pull_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_burst: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_timeout_secs: Option<u64>,
    /// Connections held at once (256); see docs/protocol.md, "Errors".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Seconds a request body may pause between two reads (30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_timeout_secs: Option<u64>,
    /// Seconds a whole request may take (300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memex_pushes_per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memex_pulls_per_minute: Option<u32>,
}

/// An initialised home.
pub struct Home {
    pub dir: PathBuf,
    pub config: Config,
}

impl Home {
    /// `--home`, else `SELVES_HOME`, else `~/.selves`.
    pub fn locate(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
        if let Some(dir) = flag {
            return Ok(dir);
        }
        if let Some(dir) = std::env::var_os("SELVES_HOME").filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(dir));
        }
        let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).context(
            "neither SELVES_HOME nor HOME is set: say where the node lives with --home DIR",
        )?;
        Ok(PathBuf::from(home).join(".selves"))
    }

    pub fn config_path(dir: &Path) -> PathBuf {
        dir.join("config.toml")
    }

    pub fn is_initialised(dir: &Path) -> bool {
        Self::config_path(dir).exists()
    }

    pub fn load(dir: PathBuf) -> anyhow::Result<Home> {
        let path = Self::config_path(&dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "no selves node at {}: run `selves init --name NAME` first (or point SELVES_HOME at an existing node)",
                dir.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let config: Config =
            toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?;
        Ok(Home { dir, config })
    }

    pub fn open_store(&self) -> anyhow::Result<Arc<Store>> {
        let key = self.node_key()?;
        let store = Store::open(
            &StorePaths::in_dir(&self.dir),
            &self.config.node.id,
            &self.config.node.name,
            key,
        )
        .with_context(|| format!("cannot open the store in {}", self.dir.display()))?;
        Ok(Arc::new(store))
    }

    pub fn node_key_path(&self) -> PathBuf {
        self.dir.join("node.key")
    }

    /// The node's signing key (`node.key`, 0600). A home made before keys
    /// existed gets one here, once; its id stays the one it had.
    pub fn node_key(&self) -> anyhow::Result<NodeKey> {
        let path = self.node_key_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let seed = selves_wire::unhex::<32>(text.trim()).with_context(|| {
                    format!("{} is damaged (not 64 hex characters)", path.display())
                })?;
                Ok(NodeKey::from_seed(seed))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = new_key()?;
                write_private(
                    &path,
                    format!("{}\n", selves_wire::hex(key.seed())).as_bytes(),
                )?;
                Ok(key)
            }
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Gives this home a new identity (`selves init --new-identity`): a
    /// new key and the id derived from it, keeping all memory. The store
    /// withdraws what the old id wrote where another home holds the same
    /// key, and writes it again under the new id. Returns (old, new) ids.
    pub fn new_identity(&mut self) -> anyhow::Result<(NodeId, NodeId)> {
        let store = self.open_store()?;
        let key = new_key()?;
        let old = self.config.node.id.clone();
        let new = store
            .adopt_identity(&key, now_ms())
            .context("cannot move the store to a new identity")?;
        drop(store);
        // The key first: a config naming the new id with the old key would
        // not open; the reverse is repaired by running this again.
        write_private(
            &self.node_key_path(),
            format!("{}\n", selves_wire::hex(key.seed())).as_bytes(),
        )?;
        self.config.node.id = new.clone();
        self.write_config()?;
        let store = self.open_store()?;
        store.reissue_pending(now_ms())?;
        Ok((old, new))
    }

    /// Writes `config.toml` from `self.config`.
    pub fn write_config(&self) -> anyhow::Result<()> {
        let text = format!(
            "# selves node configuration. The id must never be shared by two nodes.\n{}",
            toml::to_string_pretty(&self.config).context("cannot write the config")?
        );
        write_private(&Home::config_path(&self.dir), text.as_bytes())
    }

    /// The share engine over `store`, with its blob store in this home.
    pub fn open_engine(&self, store: &Arc<Store>) -> anyhow::Result<Arc<selves_share::Engine>> {
        let engine = selves_share::Engine::new(store.clone(), &self.dir)
            .with_context(|| format!("cannot open the blob store in {}", self.dir.display()))?;
        Ok(Arc::new(engine))
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("tls").join("cert.pem")
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join("tls").join("key.pem")
    }

    pub fn certificate(&self) -> anyhow::Result<CertificateDer<'static>> {
        CertificateDer::from_pem_file(self.cert_path())
            .with_context(|| format!("cannot read {}", self.cert_path().display()))
    }

    pub fn private_key(&self) -> anyhow::Result<PrivateKeyDer<'static>> {
        PrivateKeyDer::from_pem_file(self.key_path())
            .with_context(|| format!("cannot read {}", self.key_path().display()))
    }

    pub fn fingerprint(&self) -> anyhow::Result<CertFingerprint> {
        Ok(CertFingerprint::of_der(&self.certificate()?))
    }

    pub fn name(&self) -> &Name {
        &self.config.node.name
    }
}

/// Creates a new node in `dir`: id, certificate and key, config, store.
/// The config is written last: it marks the home as initialised, so an
/// interrupted init is simply run again.
pub fn init(dir: &Path, name: Name) -> anyhow::Result<Home> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make {} private", dir.display()))?;
    let tls = dir.join("tls");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&tls)
        .with_context(|| format!("cannot create {}", tls.display()))?;

    // The id is derived from the node's key, so it proves what it signs.
    let node_key = new_key()?;
    let id = node_key.public().node_id();
    write_private(
        &dir.join("node.key"),
        format!("{}\n", selves_wire::hex(node_key.seed())).as_bytes(),
    )?;

    new_certificate(dir, &name)?;

    let config = Config {
        node: NodeSection { id, name },
        server: ServerSection::default(),
    };
    let text = format!(
        "# selves node configuration. The id must never be shared by two nodes.\n{}",
        toml::to_string_pretty(&config).context("cannot write the config")?
    );
    let home = Home {
        dir: dir.to_owned(),
        config,
    };
    // The store is created before the config marks the home as ready.
    home.open_store()?;
    write_private(&Home::config_path(dir), text.as_bytes())?;
    Ok(home)
}

/// Makes the node's TLS certificate and key (`tls/`), replacing any.
pub fn new_certificate(dir: &Path, name: &Name) -> anyhow::Result<()> {
    let tls = dir.join("tls");
    let key = rcgen::KeyPair::generate().context("cannot generate a TLS key")?;
    let mut params =
        rcgen::CertificateParams::new(vec!["selves".to_owned(), "localhost".to_owned()])
            .context("cannot build certificate parameters")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("selves node {name}"));
    let cert = params
        .self_signed(&key)
        .context("cannot sign the certificate")?;
    write_private(&tls.join("key.pem"), key.serialize_pem().as_bytes())?;
    write_private(&tls.join("cert.pem"), cert.pem().as_bytes())?;

    Ok(())
}

fn new_key() -> anyhow::Result<NodeKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).context("no randomness available")?;
    Ok(NodeKey::from_seed(seed))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Writes `bytes` to `path` atomically with mode 0600: a temporary file in
/// the same directory, fsynced, renamed over `path`, then the directory
/// fsynced.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_atomic(path, bytes, 0o600)
}

/// [`write_private`] with another mode (an executable script: 0700).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().context("a file path has a parent")?;
    let mut suffix = [0u8; 6];
    getrandom::fill(&mut suffix).context("no randomness available")?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        selves_wire::hex(&suffix)
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// A default node name from the host name: lowercase, safe characters only.
pub fn default_name() -> Name {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let cleaned: String = raw
        .trim()
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    let cleaned = cleaned.trim_start_matches(['.', '-']);
    cleaned
        .parse()
        .unwrap_or_else(|_| "node".parse().expect("valid name"))
}
