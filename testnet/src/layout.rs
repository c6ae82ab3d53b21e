//! The testnet folder, its state file and the configuration files written
//! into it:
//!
//! ```text
//! DIR/testnet.json                 state: URL, credentials, nodes, pids
//! DIR/control-plane/custos.toml    the control plane's configuration
//! DIR/control-plane/master-key.hex its development master key (0600);
//!                                  the coordinator key is under its keyring
//! DIR/control-plane/hsm-pin        the user PIN of its SoftHSM2 token (0600)
//! DIR/softhsm/                     SoftHSM2's configuration and token: the
//!                                  org keys that wrap share-backup halves
//! DIR/node-N/node.toml             node N's configuration
//! DIR/node-N/data/                 its identity, master key and store
//! DIR/node-N/recovery.key          its operator's share-backup recovery key
//!                                  (0600; a production operator keeps it
//!                                  offline and brings it to restore)
//! DIR/node-N/recovery.pub          its public key
//! DIR/logs/NAME.log                stdout and stderr of each process
//! ```

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// The name of the control plane process (logs, pids).
pub const CONTROL_PLANE: &str = "control-plane";
/// The state file in the testnet folder.
pub const STATE_FILE: &str = "testnet.json";
/// The SoftHSM2 PKCS#11 module (Debian's softhsm2 package).
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The label of the testnet's token.
pub const SOFTHSM_TOKEN: &str = "custos-testnet";
/// Prime sets each node keeps ready for aux-info generation, unless `up`
/// is told otherwise (`--prime-pool-target`).
pub const PRIME_POOL_TARGET: usize = 2;

/// The name of node `index` (1-based).
pub fn node_name(index: usize) -> String {
    format!("node-{index}")
}

/// Whether `text` is 64 hex digits (an Ed25519 public key).
pub fn is_hex_key(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// The testnet folder (an absolute, canonical path).
#[derive(Debug, Clone)]
pub struct Layout {
    /// The folder.
    pub dir: PathBuf,
}

impl Layout {
    /// Creates the folder (and its `logs` and `control-plane` folders) if
    /// missing.
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let layout = Self::open(dir)?;
        for folder in [layout.logs_dir(), layout.control_plane_dir()] {
            std::fs::create_dir_all(&folder)
                .with_context(|| format!("creating {}", folder.display()))?;
        }
        Ok(layout)
    }

    /// An existing folder.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let dir = dir
            .canonicalize()
            .with_context(|| format!("no testnet folder at {}", dir.display()))?;
        Ok(Self { dir })
    }

    /// `DIR/testnet.json`.
    pub fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// `DIR/logs`.
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// `DIR/logs/NAME.log`.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.logs_dir().join(format!("{name}.log"))
    }

    /// `DIR/control-plane`: the control plane's data folder.
    pub fn control_plane_dir(&self) -> PathBuf {
        self.dir.join(CONTROL_PLANE)
    }

    /// `DIR/control-plane/custos.toml`.
    pub fn control_plane_config(&self) -> PathBuf {
        self.control_plane_dir().join("custos.toml")
    }

    /// `DIR/control-plane/master-key.hex`: the development master key of
    /// the control plane's keyring (seal mode `env`), mode 0600. Handed to
    /// the control plane as `CUSTOS_MASTER_KEY`, never written to its
    /// configuration file.
    pub fn control_plane_master_key(&self) -> PathBuf {
        self.control_plane_dir().join("master-key.hex")
    }

    /// The development master key (64 hex characters), created from the
    /// operating system's randomness on the first call.
    pub fn load_or_create_master_key(&self) -> anyhow::Result<String> {
        let path = self.control_plane_master_key();
        if let Ok(text) = std::fs::read_to_string(&path) {
            let text = text.trim().to_string();
            anyhow::ensure!(
                is_hex_key(&text),
                "{} does not hold 64 hex characters",
                path.display()
            );
            return Ok(text);
        }
        let mut bytes = [0u8; 32];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
        let text: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        write_atomically(&path, &text, 0o600)?;
        Ok(text)
    }

    /// `DIR/control-plane/hsm-pin`: the user PIN of the testnet's SoftHSM2
    /// token (mode 0600).
    pub fn control_plane_hsm_pin(&self) -> PathBuf {
        self.control_plane_dir().join("hsm-pin")
    }

    /// `DIR/softhsm`: the SoftHSM2 configuration and token folder.
    pub fn softhsm_dir(&self) -> PathBuf {
        self.dir.join("softhsm")
    }

    /// `DIR/softhsm/softhsm2.conf`, given to the control plane as
    /// `SOFTHSM2_CONF`.
    pub fn softhsm_conf(&self) -> PathBuf {
        self.softhsm_dir().join("softhsm2.conf")
    }

    /// `DIR/NAME/recovery.key`: the node operator's recovery secret key.
    pub fn node_recovery_key(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("recovery.key")
    }

    /// `DIR/NAME/recovery.pub`: its public key (64 hex characters).
    pub fn node_recovery_public(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("recovery.pub")
    }

    /// `DIR/NAME`: a node's folder.
    pub fn node_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `DIR/NAME/node.toml`.
    pub fn node_config(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("node.toml")
    }

    /// `DIR/NAME/data`: the node's `data_dir`.
    pub fn node_data_dir(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("data")
    }

    /// The node's identity key, which `custos-signer init` creates.
    pub fn node_identity(&self, name: &str) -> PathBuf {
        self.node_data_dir(name).join("identity.key")
    }

    /// The node's master key file.
    pub fn node_master_key(&self, name: &str) -> PathBuf {
        self.node_data_dir(name).join("master.key")
    }

    /// The configuration file a process of this testnet runs with (its
    /// command line names it, which identifies the process).
    pub fn config_of(&self, process: &str) -> PathBuf {
        if process == CONTROL_PLANE {
            self.control_plane_config()
        } else {
            self.node_config(process)
        }
    }

    /// Reads `testnet.json`, if there is one.
    pub fn load_state(&self) -> anyhow::Result<Option<State>> {
        let path = self.state_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
        };
        let state = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a testnet state file", path.display()))?;
        Ok(Some(state))
    }

    /// Writes `testnet.json` atomically, readable by the owner only (it
    /// holds the root credentials).
    pub fn save_state(&self, state: &State) -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(state)?;
        text.push('\n');
        write_atomically(&self.state_path(), &text, 0o600)
    }
}

/// Writes `path` through a temporary file in the same folder and a rename,
/// so readers see the old or the new content, never a mix.
pub fn write_atomically(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    let file_name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let mut temporary_name = file_name.to_os_string();
    temporary_name.push(format!(".tmp{}", std::process::id()));
    let temporary = path.with_file_name(temporary_name);
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temporary)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    };
    write().with_context(|| format!("writing {}", path.display()))
}

/// `DIR/testnet.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct State {
    /// The control plane's base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    /// The root client id (printed by the control plane on its first start).
    pub client_id: Option<String>,
    /// The root client secret.
    pub client_secret: Option<String>,
    /// The signer nodes.
    pub nodes: Vec<NodeEntry>,
    /// Whether the ECDSA (CGGMP21) committee of all nodes has its aux info.
    pub ecdsa_committee: bool,
    /// Process ids of the running processes by name (`control-plane`,
    /// `node-1`, ...); empty when the testnet is stopped.
    pub pids: BTreeMap<String, u32>,
    /// The `custos-testnet up` process watching them, while it runs.
    pub supervisor_pid: Option<u32>,
    /// The control plane's database URL, when one was given.
    pub database_url: Option<String>,
    /// The coordinator's Ed25519 public key (hex) the nodes pin.
    pub coordinator: String,
    /// Whether nodes were given pregenerated Paillier primes from a file
    /// (`up --dev-primes`): development and tests only. Written only when
    /// true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dev_primes: bool,
}

impl State {
    /// The root credentials, when known.
    pub fn credentials(&self) -> Option<Credentials> {
        Some(Credentials {
            client_id: self.client_id.clone()?,
            client_secret: self.client_secret.clone()?,
        })
    }
}

/// Root API credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: String,
}

/// One signer node as the control plane is told about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// `node-N`.
    pub name: String,
    /// Its party id (Ed25519 public key, hex); empty until initialised.
    pub id: String,
    /// Its libp2p address, `/ip4/127.0.0.1/tcp/PORT`.
    pub address: String,
    /// Its operator endpoint, `127.0.0.1:PORT`.
    pub http: SocketAddr,
}

impl NodeEntry {
    /// A node listening on loopback ports.
    pub fn new(name: String, id: String, p2p_port: u16, http_port: u16) -> Self {
        Self {
            name,
            id,
            address: format!("/ip4/127.0.0.1/tcp/{p2p_port}"),
            http: SocketAddr::from((Ipv4Addr::LOCALHOST, http_port)),
        }
    }

    /// The TCP port of its libp2p address.
    pub fn p2p_port(&self) -> Option<u16> {
        self.address
            .strip_prefix("/ip4/127.0.0.1/tcp/")?
            .parse()
            .ok()
    }
}

/// Whether a loopback TCP port can be listened on now.
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// Hands out distinct free loopback ports.
#[derive(Debug, Default)]
pub struct PortPicker {
    used: HashSet<u16>,
}

impl PortPicker {
    /// `wanted` if it is free and not handed out yet, else a new free port.
    pub fn reuse_or_pick(&mut self, wanted: Option<u16>) -> anyhow::Result<u16> {
        match wanted {
            Some(port) if port != 0 && !self.used.contains(&port) && port_is_free(port) => {
                self.used.insert(port);
                Ok(port)
            }
            _ => self.pick(),
        }
    }

    /// Exactly `port`; fails when it is taken.
    pub fn require(&mut self, port: u16) -> anyhow::Result<u16> {
        if port == 0 || self.used.contains(&port) || !port_is_free(port) {
            bail!("port {port} on 127.0.0.1 is not free");
        }
        self.used.insert(port);
        Ok(port)
    }

    /// A free port the OS chooses (bind to port 0, then release it).
    pub fn pick(&mut self) -> anyhow::Result<u16> {
        for _ in 0..100 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|listener| listener.local_addr())
                .context("finding a free loopback port")?
                .port();
            if self.used.insert(port) {
                return Ok(port);
            }
        }
        bail!("the OS keeps handing out ports already chosen")
    }
}

/// A TOML basic string (quoted and escaped).
pub fn toml_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for character in text.chars() {
        match character {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            '\t' => quoted.push_str("\\t"),
            control if control.is_control() => {
                quoted.push_str(&format!("\\u{:04X}", u32::from(control)));
            }
            other => quoted.push(other),
        }
    }
    quoted.push('"');
    quoted
}

fn path_text(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not valid UTF-8", path.display()))
}

/// The `node.toml` of `node` (see `signer-node/src/config.rs`): file
/// master key in its data folder, `prime_pool_target` prime sets kept
/// ready, and every other node in `nodes` with a known id as a peer.
pub fn node_config_text(
    layout: &Layout,
    node: &NodeEntry,
    coordinator: &str,
    nodes: &[NodeEntry],
    prime_pool_target: usize,
) -> anyhow::Result<String> {
    let mut text = format!(
        "# Written by custos-testnet; rewritten on every `custos-testnet up`.\n\
         data_dir = {data_dir}\n\
         listen = {listen}\n\
         http_listen = {http}\n\
         coordinator = {coordinator}\n\
         prime_pool_target = {prime_pool_target}\n\
         \n\
         [master_key]\n\
         backend = \"file\"\n\
         path = {master_key}\n",
        data_dir = toml_string(path_text(&layout.node_data_dir(&node.name))?),
        listen = toml_string(&node.address),
        http = toml_string(&node.http.to_string()),
        coordinator = toml_string(coordinator),
        master_key = toml_string(path_text(&layout.node_master_key(&node.name))?),
    );
    // Share backups, when the operator's recovery key exists.
    if let Ok(public) = std::fs::read_to_string(layout.node_recovery_public(&node.name)) {
        text.push_str(&format!(
            "\n[backup]\nrecovery_public_key = {}\nrecovery_key_file = {}\n",
            toml_string(public.trim()),
            toml_string(path_text(&layout.node_recovery_key(&node.name))?),
        ));
    }
    for peer in nodes {
        if peer.name == node.name || peer.id.is_empty() {
            continue;
        }
        text.push_str(&format!(
            "\n[[peers]]\nid = {}\naddress = {}\n",
            toml_string(&peer.id),
            toml_string(&peer.address)
        ));
    }
    Ok(text)
}

/// The control plane's `custos.toml`.
pub fn control_plane_config_text(
    layout: &Layout,
    listen: SocketAddr,
    database_url: Option<&str>,
    nodes: &[NodeEntry],
) -> anyhow::Result<String> {
    let mut text = format!(
        "# Written by custos-testnet; rewritten on every `custos-testnet up`.\n\
         listen = {listen}\n\
         data_dir = {data_dir}\n",
        listen = toml_string(&listen.to_string()),
        data_dir = toml_string(path_text(&layout.control_plane_dir())?),
    );
    if let Some(url) = database_url {
        text.push_str(&format!("database_url = {}\n", toml_string(url)));
    }
    // A development deployment: the keyring's master key comes from the
    // environment (see `Layout::control_plane_master_key`). Tables last.
    text.push_str("dev_mode = true\n\n[seal]\nmode = \"env\"\n");
    // The org keys that wrap share-backup halves (and `backend: "hsm"`
    // registry keys) live in the testnet's SoftHSM2 token, when set up.
    if let Ok(pin) = std::fs::read_to_string(layout.control_plane_hsm_pin()) {
        text.push_str(&format!(
            "\n[keys.pkcs11]\nmodule = {}\ntoken_label = {}\npin = {}\n",
            toml_string(SOFTHSM_MODULE),
            toml_string(SOFTHSM_TOKEN),
            toml_string(pin.trim()),
        ));
    }
    for node in nodes {
        text.push_str(&format!(
            "\n[[nodes]]\nname = {}\nid = {}\naddress = {}\nhttp = {}\n",
            toml_string(&node.name),
            toml_string(&node.id),
            toml_string(&node.address),
            toml_string(&node.http.to_string()),
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_layout(tag: &str) -> Layout {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "custos-testnet-{tag}-{}-{nanos}",
            std::process::id()
        ));
        Layout::create(&dir).unwrap()
    }

    fn nodes() -> Vec<NodeEntry> {
        vec![
            NodeEntry::new(node_name(1), "aa".repeat(32), 7101, 7181),
            NodeEntry::new(node_name(2), "bb".repeat(32), 7102, 7182),
            NodeEntry::new(node_name(3), String::new(), 7103, 7183),
        ]
    }

    #[test]
    fn node_config_is_valid_toml_with_peers() {
        let layout = temp_layout("node");
        let nodes = nodes();
        let text = node_config_text(
            &layout,
            &nodes[0],
            &"cc".repeat(32),
            &nodes,
            PRIME_POOL_TARGET,
        )
        .unwrap();
        let config: toml::Table = toml::from_str(&text).unwrap();
        let data_dir = layout.dir.join("node-1").join("data");
        assert_eq!(config["data_dir"].as_str(), data_dir.to_str());
        assert_eq!(config["listen"].as_str(), Some("/ip4/127.0.0.1/tcp/7101"));
        assert_eq!(config["http_listen"].as_str(), Some("127.0.0.1:7181"));
        assert_eq!(
            config["coordinator"].as_str(),
            Some("cc".repeat(32).as_str())
        );
        assert_eq!(config["prime_pool_target"].as_integer(), Some(2));
        assert_eq!(config["master_key"]["backend"].as_str(), Some("file"));
        assert_eq!(
            config["master_key"]["path"].as_str(),
            data_dir.join("master.key").to_str()
        );
        // Itself and the node without an id yet are left out.
        let peers = config["peers"].as_array().unwrap();
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0]["id"].as_str(), Some("bb".repeat(32).as_str()));
        assert_eq!(
            peers[0]["address"].as_str(),
            Some("/ip4/127.0.0.1/tcp/7102")
        );
        let keys: Vec<&str> = config.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "coordinator",
                "data_dir",
                "http_listen",
                "listen",
                "master_key",
                "peers",
                "prime_pool_target"
            ]
        );
        let text = node_config_text(&layout, &nodes[1], &"cc".repeat(32), &nodes, 0).unwrap();
        let config: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(config["prime_pool_target"].as_integer(), Some(0));
        std::fs::remove_dir_all(&layout.dir).unwrap();
    }

    #[test]
    fn control_plane_config_lists_nodes() {
        let layout = temp_layout("cp");
        let listen: SocketAddr = "127.0.0.1:8200".parse().unwrap();
        let text = control_plane_config_text(&layout, listen, None, &nodes()).unwrap();
        let config: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(config["listen"].as_str(), Some("127.0.0.1:8200"));
        assert_eq!(
            config["data_dir"].as_str(),
            layout.dir.join("control-plane").to_str()
        );
        assert!(!config.contains_key("database_url"));
        let listed = config["nodes"].as_array().unwrap();
        assert_eq!(listed.len(), 3);
        assert_eq!(listed[1]["name"].as_str(), Some("node-2"));
        assert_eq!(listed[1]["id"].as_str(), Some("bb".repeat(32).as_str()));
        assert_eq!(
            listed[1]["address"].as_str(),
            Some("/ip4/127.0.0.1/tcp/7102")
        );
        assert_eq!(listed[1]["http"].as_str(), Some("127.0.0.1:7182"));

        let url = "sqlite:///tmp/x \"quoted\"\\.db";
        let text = control_plane_config_text(&layout, listen, Some(url), &[]).unwrap();
        let config: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(config["database_url"].as_str(), Some(url));
        // A development deployment: the env seal backend, and no secret in
        // the file (the key goes in through CUSTOS_MASTER_KEY).
        assert_eq!(config["dev_mode"].as_bool(), Some(true));
        assert_eq!(config["seal"]["mode"].as_str(), Some("env"));
        assert!(!config["seal"]
            .as_table()
            .unwrap()
            .contains_key("master_key"));
        std::fs::remove_dir_all(&layout.dir).unwrap();
    }

    #[test]
    fn state_round_trips_in_camel_case() {
        let layout = temp_layout("state");
        assert_eq!(layout.load_state().unwrap(), None);
        let mut state = State {
            url: "http://127.0.0.1:8200".into(),
            client_id: Some("root".into()),
            client_secret: Some("s3cret".into()),
            nodes: nodes(),
            ecdsa_committee: true,
            ..State::default()
        };
        state.pids.insert(CONTROL_PLANE.into(), 41);
        state.pids.insert("node-1".into(), 42);
        layout.save_state(&state).unwrap();
        assert_eq!(layout.load_state().unwrap(), Some(state.clone()));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(layout.state_path()).unwrap()).unwrap();
        assert_eq!(json["url"], "http://127.0.0.1:8200");
        assert_eq!(json["clientId"], "root");
        assert_eq!(json["clientSecret"], "s3cret");
        assert_eq!(json["ecdsaCommittee"], true);
        assert_eq!(json["pids"]["control-plane"], 41);
        assert_eq!(json["nodes"][0]["name"], "node-1");
        assert_eq!(json["nodes"][0]["id"], "aa".repeat(32));
        assert_eq!(json["nodes"][0]["address"], "/ip4/127.0.0.1/tcp/7101");
        assert_eq!(json["nodes"][0]["http"], "127.0.0.1:7181");
        // Only a testnet with dev primes says so.
        assert!(json.get("devPrimes").is_none());
        state.dev_primes = true;
        layout.save_state(&state).unwrap();
        assert_eq!(layout.load_state().unwrap(), Some(state.clone()));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(layout.state_path()).unwrap()).unwrap();
        assert_eq!(json["devPrimes"], true);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(layout.state_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            state.credentials(),
            Some(Credentials {
                client_id: "root".into(),
                client_secret: "s3cret".into()
            })
        );
        // Files from older versions, with fields missing, still load.
        std::fs::write(layout.state_path(), r#"{"url":"http://127.0.0.1:1"}"#).unwrap();
        let old = layout.load_state().unwrap().unwrap();
        assert_eq!(old.credentials(), None);
        assert!(old.nodes.is_empty());
        assert!(!old.dev_primes);
        std::fs::remove_dir_all(&layout.dir).unwrap();
    }

    #[test]
    fn ports_are_distinct_and_reused_when_free() {
        let mut picker = PortPicker::default();
        let first = picker.pick().unwrap();
        // Handed out once only.
        assert_ne!(picker.reuse_or_pick(Some(first)).unwrap(), first);
        assert!(picker.require(first).is_err());
        let busy = TcpListener::bind("127.0.0.1:0").unwrap();
        let busy_port = busy.local_addr().unwrap().port();
        assert_ne!(picker.reuse_or_pick(Some(busy_port)).unwrap(), busy_port);
        assert!(picker.require(busy_port).is_err());
        drop(busy);
        let mut fresh = PortPicker::default();
        assert_eq!(fresh.reuse_or_pick(Some(busy_port)).unwrap(), busy_port);
        let ports: HashSet<u16> = (0..20).map(|_| fresh.pick().unwrap()).collect();
        assert_eq!(ports.len(), 20);
        assert!(!ports.contains(&busy_port));
    }

    #[test]
    fn names_keys_and_addresses() {
        assert_eq!(node_name(3), "node-3");
        assert!(is_hex_key(&"aB".repeat(32)));
        assert!(!is_hex_key(&"a".repeat(63)));
        assert!(!is_hex_key(&"g".repeat(64)));
        let node = NodeEntry::new("node-1".into(), String::new(), 7101, 7181);
        assert_eq!(node.p2p_port(), Some(7101));
        assert_eq!(toml_string("a\"b\\c\u{1}"), "\"a\\\"b\\\\c\\u0001\"");
    }
}
