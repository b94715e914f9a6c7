//! Rendezvous of ranks on several hosts, as torchrun does it: rank 0 listens on
//! `MASTER_ADDR:MASTER_PORT`, every other rank connects to it, and once all `WORLD_SIZE − 1` have
//! joined rank 0 sends each the 128-byte NCCL unique id that `ncclCommInitRank` needs.
//!
//! Where the values come from, first found wins: the flags (`--rank`, `--world-size`,
//! `--master-addr`, `--master-port`), then the environment (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`,
//! `MASTER_PORT`, `LOCAL_RANK`); `MASTER_ADDR` defaults to `127.0.0.1`, `MASTER_PORT` to 29500 and
//! `LOCAL_RANK` to `RANK` (the GPU of this rank on its host).
//!
//! The wire protocol (TCP, little-endian):
//! ```text
//! rank r → rank 0:  b"MSRDV001" · world_size u32 · rank u32
//! rank 0 → rank r:  0u8 · id [u8; 128]                 once every rank has joined
//!                   1u8 · len u16 · message (UTF-8)    on a mismatch (world size, duplicate rank)
//! ```
//! A rank that connects before rank 0 listens retries until the timeout; rank 0 gives up when the
//! others have not all joined by then, naming how many did.
//!
//! ```no_run
//! use modelspec_runtime::dist::rendezvous::{exchange_id, RendezvousConfig, RendezvousFlags};
//! let cfg = RendezvousConfig::resolve(&RendezvousFlags::default(), |k| std::env::var(k).ok())?;
//! let id = exchange_id(&cfg, (cfg.rank == 0).then_some([7u8; 128]))?;
//! # Ok::<(), modelspec_runtime::dist::RendezvousError>(())
//! ```

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use thiserror::Error;

/// Bytes of an NCCL unique id.
pub const ID_BYTES: usize = 128;
const MAGIC: &[u8; 8] = b"MSRDV001";
/// `MASTER_PORT` when none is given (torchrun's default).
pub const DEFAULT_PORT: u16 = 29500;

/// What can go wrong while ranks find each other.
#[derive(Debug, Error)]
pub enum RendezvousError {
    /// A value is missing from both the flags and the environment.
    #[error("{what} is not set: pass {flag} or set {env}")]
    Missing {
        /// What it is.
        what: &'static str,
        /// The flag.
        flag: &'static str,
        /// The environment variable.
        env: &'static str,
    },
    /// A value does not parse or is out of range.
    #[error("{what} = `{value}`: {why}")]
    Invalid {
        /// What it is.
        what: &'static str,
        /// The value given.
        value: String,
        /// Why it is wrong.
        why: String,
    },
    /// Rank 0 could not listen.
    #[error("rank 0 could not listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// This rank could not reach rank 0 in time.
    #[error("rank {rank} could not reach rank 0 at {addr} within {seconds} s: {source}")]
    Connect {
        /// This rank.
        rank: usize,
        /// The address.
        addr: String,
        /// The timeout.
        seconds: u64,
        /// The last error.
        source: std::io::Error,
    },
    /// Not every rank joined in time.
    #[error("rendezvous timed out after {seconds} s: {joined} of {expected} ranks joined rank 0")]
    Timeout {
        /// The timeout.
        seconds: u64,
        /// Ranks that joined (rank 0 included).
        joined: usize,
        /// The world size.
        expected: usize,
    },
    /// Rank 0 and this rank disagree (world size, duplicate rank), or a peer spoke nonsense.
    #[error("rendezvous: {0}")]
    Mismatch(String),
    /// The connection broke.
    #[error("rendezvous connection: {0}")]
    Io(#[from] std::io::Error),
}

/// Rendezvous values given as flags (each overrides its environment variable).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RendezvousFlags {
    /// `--rank`.
    pub rank: Option<usize>,
    /// `--world-size`.
    pub world_size: Option<usize>,
    /// `--master-addr`.
    pub master_addr: Option<String>,
    /// `--master-port`.
    pub master_port: Option<u16>,
    /// `--local-rank`.
    pub local_rank: Option<usize>,
}

/// Where this rank is and where rank 0 listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RendezvousConfig {
    /// This rank, in `0..world_size`.
    pub rank: usize,
    /// Ranks over all hosts.
    pub world_size: usize,
    /// This rank's GPU on its host.
    pub local_rank: usize,
    /// Rank 0's host.
    pub master_addr: String,
    /// Rank 0's port.
    pub master_port: u16,
    /// How long to wait for the others.
    pub timeout: Duration,
}

fn parse<T: std::str::FromStr>(what: &'static str, value: String) -> Result<T, RendezvousError>
where
    T::Err: std::fmt::Display,
{
    value
        .trim()
        .parse()
        .map_err(|e: T::Err| RendezvousError::Invalid {
            what,
            value,
            why: e.to_string(),
        })
}

impl RendezvousConfig {
    /// The configuration from `flags`, then `env` (a lookup such as `|k| std::env::var(k).ok()`).
    /// Rank and world size are required; the timeout is 300 s.
    pub fn resolve(
        flags: &RendezvousFlags,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, RendezvousError> {
        let rank = match flags.rank {
            Some(r) => r,
            None => parse(
                "RANK",
                env("RANK").ok_or(RendezvousError::Missing {
                    what: "the rank",
                    flag: "--rank",
                    env: "RANK",
                })?,
            )?,
        };
        let world_size: usize = match flags.world_size {
            Some(w) => w,
            None => parse(
                "WORLD_SIZE",
                env("WORLD_SIZE").ok_or(RendezvousError::Missing {
                    what: "the world size",
                    flag: "--world-size",
                    env: "WORLD_SIZE",
                })?,
            )?,
        };
        if world_size == 0 {
            return Err(RendezvousError::Invalid {
                what: "WORLD_SIZE",
                value: "0".into(),
                why: "at least one rank is needed".into(),
            });
        }
        if rank >= world_size {
            return Err(RendezvousError::Invalid {
                what: "RANK",
                value: rank.to_string(),
                why: format!(
                    "ranks run from 0 to {} (world size {world_size})",
                    world_size - 1
                ),
            });
        }
        let master_addr = flags
            .master_addr
            .clone()
            .or_else(|| env("MASTER_ADDR"))
            .unwrap_or_else(|| "127.0.0.1".into());
        let master_port = match flags.master_port {
            Some(p) => p,
            None => match env("MASTER_PORT") {
                Some(p) => parse("MASTER_PORT", p)?,
                None => DEFAULT_PORT,
            },
        };
        let local_rank = match flags.local_rank {
            Some(l) => l,
            None => match env("LOCAL_RANK") {
                Some(l) => parse("LOCAL_RANK", l)?,
                None => rank,
            },
        };
        Ok(RendezvousConfig {
            rank,
            world_size,
            local_rank,
            master_addr,
            master_port,
            timeout: Duration::from_secs(300),
        })
    }

    fn addr(&self) -> String {
        if self.master_addr.contains(':') && !self.master_addr.starts_with('[') {
            format!("[{}]:{}", self.master_addr, self.master_port)
        } else {
            format!("{}:{}", self.master_addr, self.master_port)
        }
    }
}

/// Exchanges the NCCL unique id: rank 0 passes `Some(id)` and gets it back once every rank has
/// joined; every other rank passes `None` and receives rank 0's id.
pub fn exchange_id(
    cfg: &RendezvousConfig,
    id: Option<[u8; ID_BYTES]>,
) -> Result<[u8; ID_BYTES], RendezvousError> {
    if cfg.rank == 0 {
        let id = id
            .ok_or_else(|| RendezvousError::Mismatch("rank 0 must provide the unique id".into()))?;
        serve(cfg, id)
    } else {
        join(cfg)
    }
}

fn serve(cfg: &RendezvousConfig, id: [u8; ID_BYTES]) -> Result<[u8; ID_BYTES], RendezvousError> {
    if cfg.world_size == 1 {
        return Ok(id);
    }
    let addr = cfg.addr();
    let listener = TcpListener::bind(&addr).map_err(|source| RendezvousError::Bind {
        addr: addr.clone(),
        source,
    })?;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + cfg.timeout;
    let mut peers: Vec<Option<TcpStream>> = (0..cfg.world_size).map(|_| None).collect();
    let mut joined = 1;
    while joined < cfg.world_size {
        match listener.accept() {
            Ok((mut stream, _)) => {
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                let mut hello = [0u8; 16];
                if stream.read_exact(&mut hello).is_err() || &hello[..8] != MAGIC {
                    // Not one of ours (a port scanner, a stale client): ignore it.
                    continue;
                }
                let world = u32::from_le_bytes(hello[8..12].try_into().expect("4 bytes")) as usize;
                let rank = u32::from_le_bytes(hello[12..16].try_into().expect("4 bytes")) as usize;
                let refusal = if world != cfg.world_size {
                    Some(format!(
                        "rank {rank} says the world size is {world}, rank 0 says {}",
                        cfg.world_size
                    ))
                } else if rank == 0 || rank >= cfg.world_size {
                    Some(format!("rank {rank} is out of range 1..{}", cfg.world_size))
                } else if peers[rank].is_some() {
                    Some(format!("two processes claim rank {rank}"))
                } else {
                    None
                };
                if let Some(message) = refusal {
                    refuse(&mut stream, &message);
                    // Tell the ranks already waiting too, then fail.
                    for s in peers.iter_mut().flatten() {
                        refuse(s, &message);
                    }
                    return Err(RendezvousError::Mismatch(message));
                }
                peers[rank] = Some(stream);
                joined += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(RendezvousError::Timeout {
                        seconds: cfg.timeout.as_secs(),
                        joined,
                        expected: cfg.world_size,
                    });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
    for stream in peers.iter_mut().flatten() {
        let mut reply = [0u8; 1 + ID_BYTES];
        reply[1..].copy_from_slice(&id);
        stream.write_all(&reply)?;
        stream.flush()?;
    }
    Ok(id)
}

fn refuse(stream: &mut TcpStream, message: &str) {
    let bytes = message.as_bytes();
    let len = bytes.len().min(u16::MAX as usize);
    let mut reply = vec![1u8];
    reply.extend_from_slice(&(len as u16).to_le_bytes());
    reply.extend_from_slice(&bytes[..len]);
    // The peer is told if it can be; rank 0 reports the error either way.
    let _ = stream.write_all(&reply);
}

fn join(cfg: &RendezvousConfig) -> Result<[u8; ID_BYTES], RendezvousError> {
    let addr = cfg.addr();
    let deadline = Instant::now() + cfg.timeout;
    let mut stream = loop {
        let attempt = addr
            .to_socket_addrs()
            .and_then(|mut addrs| {
                addrs.next().ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no address for the host")
                })
            })
            .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)));
        match attempt {
            Ok(s) => break s,
            Err(source) => {
                if Instant::now() >= deadline {
                    return Err(RendezvousError::Connect {
                        rank: cfg.rank,
                        addr,
                        seconds: cfg.timeout.as_secs(),
                        source,
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    let mut hello = Vec::with_capacity(16);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&(cfg.world_size as u32).to_le_bytes());
    hello.extend_from_slice(&(cfg.rank as u32).to_le_bytes());
    stream.write_all(&hello)?;
    stream.set_read_timeout(Some(
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1)),
    ))?;
    let mut status = [0u8; 1];
    stream.read_exact(&mut status).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => RendezvousError::Timeout {
            seconds: cfg.timeout.as_secs(),
            joined: 0,
            expected: cfg.world_size,
        },
        _ => RendezvousError::Io(e),
    })?;
    match status[0] {
        0 => {
            let mut id = [0u8; ID_BYTES];
            stream.read_exact(&mut id)?;
            Ok(id)
        }
        1 => {
            let mut len = [0u8; 2];
            stream.read_exact(&mut len)?;
            let mut message = vec![0u8; u16::from_le_bytes(len) as usize];
            stream.read_exact(&mut message)?;
            Err(RendezvousError::Mismatch(format!(
                "rank 0 refused rank {}: {}",
                cfg.rank,
                String::from_utf8_lossy(&message)
            )))
        }
        other => Err(RendezvousError::Mismatch(format!(
            "rank 0 answered with an unknown status {other}"
        ))),
    }
}
