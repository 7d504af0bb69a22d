//! The store's identity and the marker file that outlives the store file.
//!
//! A store is given a random 128-bit id when it is created. The id is kept inside the store
//! file and in a marker file beside it (`coordinator.id` next to `coordinator.redb`). The
//! marker tells a data dir that held a store from one that never did, so a store file that
//! went missing or empty is refused rather than silently replaced by an empty cluster. The id
//! tells agents that the coordinator speaks for another store (a reset, a restored backup),
//! so they stop holding its desired sets against versions another store gave.
//!
//! What to do at open is decided by two pure functions, [`plan_open`] (before the file is
//! opened) and [`plan_identity`] (on what the opened file holds).

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The store's own record of its identity, kept in the store file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoreMeta {
    /// Random 128-bit id, 32 lowercase hex digits.
    pub store_id: String,
    /// Times a coordinator opened the file; the marker keeps the count of the last open, so
    /// an older copy of the file (a restored backup) is told by a lower count.
    pub opens: u64,
    /// Record format every record was brought to (older records are rewritten at open).
    pub format: u32,
}

/// What the marker file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Marker {
    /// The store's id; `None` when the marker is unreadable (it still tells a store was here).
    pub store_id: Option<String>,
    /// `opens` of the store at its last open.
    pub opens: u64,
}

/// The store file as found before opening it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnDisk {
    /// No file.
    Missing,
    /// A file of 0 bytes.
    Empty,
    /// A file with content.
    Present,
}

/// What an opened store file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Contents {
    /// Nothing: no identity and no record (just created, or re-created by something else).
    Blank,
    /// Records but no identity: written by a coordinator from before store identities.
    Legacy,
    /// A store with its identity.
    Identified(StoreMeta),
}

/// Why the store is not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The marker is there, the file is not.
    Missing,
    /// The marker is there, the file has 0 bytes.
    Empty,
    /// The marker is there, the file holds no cluster state.
    Blank,
}

impl Refusal {
    /// How the file was found, for the error message.
    pub fn found(self) -> &'static str {
        match self {
            Refusal::Missing => "is missing",
            Refusal::Empty => "is empty (0 bytes)",
            Refusal::Blank => "holds no cluster state",
        }
    }
}

/// How to open the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenPlan {
    /// Create a new file (0600) and initialize it.
    Create,
    /// Open what is there (an empty file without a marker is initialized in place).
    Open,
}

/// Decides, before opening, whether the file may be opened or created.
pub(crate) fn plan_open(marker_present: bool, on_disk: OnDisk) -> Result<OpenPlan, Refusal> {
    match (marker_present, on_disk) {
        (true, OnDisk::Missing) => Err(Refusal::Missing),
        (true, OnDisk::Empty) => Err(Refusal::Empty),
        (false, OnDisk::Missing) => Ok(OpenPlan::Create),
        // A crash while the file was first created leaves it empty, before any marker.
        (false, OnDisk::Empty) | (_, OnDisk::Present) => Ok(OpenPlan::Open),
    }
}

/// Why the store gets a new identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NewIdentity {
    /// A new, empty store.
    Created,
    /// A store from before identities.
    Upgraded,
    /// The file is an older copy of this store (a restored backup): its open count is below
    /// the marker's.
    Restored {
        /// Opens the file counts.
        file_opens: u64,
        /// Opens the marker counts.
        marker_opens: u64,
    },
    /// The file is another store's, or the marker is unreadable.
    Replaced {
        /// The id the file holds.
        file_id: String,
        /// The id the marker holds, if readable.
        marker_id: Option<String>,
    },
    /// The file has an identity but no marker beside it: moved or restored into this data
    /// dir, or a crash between creating the file and writing the marker.
    Unmarked {
        /// The id the file holds.
        file_id: String,
    },
}

impl fmt::Display for NewIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NewIdentity::Created => write!(f, "new store"),
            NewIdentity::Upgraded => write!(f, "the store predates store identities"),
            NewIdentity::Restored {
                file_opens,
                marker_opens,
            } => write!(
                f,
                "the file is an older copy of the store (opened {file_opens} times, the \
                 marker says {marker_opens}): a restored backup"
            ),
            NewIdentity::Replaced { file_id, marker_id } => write!(
                f,
                "the file holds store {file_id}, the marker {}",
                marker_id.as_deref().unwrap_or("is unreadable")
            ),
            NewIdentity::Unmarked { file_id } => {
                write!(
                    f,
                    "the file holds store {file_id} but no marker was beside it"
                )
            }
        }
    }
}

/// Which identity the opened store runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IdentityPlan {
    /// The file's own, this one.
    Keep(String),
    /// A new one, since agents may hold versions another store gave.
    New(NewIdentity),
}

/// Decides the identity from the marker and what the opened file holds.
pub(crate) fn plan_identity(
    marker: Option<&Marker>,
    contents: &Contents,
) -> Result<IdentityPlan, Refusal> {
    match (marker, contents) {
        (Some(_), Contents::Blank) => Err(Refusal::Blank),
        (None, Contents::Blank) => Ok(IdentityPlan::New(NewIdentity::Created)),
        (_, Contents::Legacy) => Ok(IdentityPlan::New(NewIdentity::Upgraded)),
        (None, Contents::Identified(meta)) => Ok(IdentityPlan::New(NewIdentity::Unmarked {
            file_id: meta.store_id.clone(),
        })),
        (Some(marker), Contents::Identified(meta)) => {
            if marker.store_id.as_deref() != Some(meta.store_id.as_str()) {
                Ok(IdentityPlan::New(NewIdentity::Replaced {
                    file_id: meta.store_id.clone(),
                    marker_id: marker.store_id.clone(),
                }))
            } else if meta.opens < marker.opens {
                Ok(IdentityPlan::New(NewIdentity::Restored {
                    file_opens: meta.opens,
                    marker_opens: marker.opens,
                }))
            } else {
                Ok(IdentityPlan::Keep(meta.store_id.clone()))
            }
        }
    }
}

/// A new random store id: 128 bits as 32 lowercase hex digits.
pub(crate) fn new_store_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The marker beside the store file `store`: same name, extension `id`.
pub(crate) fn marker_path(store: &Path) -> PathBuf {
    store.with_extension("id")
}

const MARKER_HEADER: &str = "\
# Written by drover-coordinator. The store file beside it holds this cluster's state; while
# this file is here, the coordinator refuses to start if that store file is missing or empty.
# Remove this file only to start a new, empty cluster on purpose.
";

/// The marker's text.
pub(crate) fn format_marker(store_id: &str, opens: u64) -> String {
    format!("{MARKER_HEADER}store_id={store_id}\nopens={opens}\n")
}

/// Reads a marker's text; `None` fields when they cannot be read (the marker still counts).
pub(crate) fn parse_marker(text: &str) -> Marker {
    let mut marker = Marker {
        store_id: None,
        opens: 0,
    };
    for line in text.lines().map(str::trim) {
        if let Some(id) = line.strip_prefix("store_id=") {
            let id = id.trim();
            if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                marker.store_id = Some(id.to_ascii_lowercase());
            }
        } else if let Some(opens) = line.strip_prefix("opens=") {
            marker.opens = opens.trim().parse().unwrap_or(0);
        }
    }
    marker
}

/// Reads the marker at `path`, `None` when there is none.
pub(crate) fn read_marker(path: &Path) -> std::io::Result<Option<Marker>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(parse_marker(&String::from_utf8_lossy(&bytes)))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes the marker at `path` atomically and durably: a temporary file, fsync, rename,
/// fsync of the directory.
pub(crate) fn write_marker(path: &Path, store_id: &str, opens: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("id.tmp");
    {
        let mut file = private_file_options().truncate(true).open(&tmp)?;
        file.write_all(format_marker(store_id, opens).as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Options that create a file readable by its owner only (the store holds env values).
pub(crate) fn private_file_options() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str, opens: u64) -> StoreMeta {
        StoreMeta {
            store_id: id.into(),
            opens,
            format: 2,
        }
    }

    fn marker(id: &str, opens: u64) -> Marker {
        Marker {
            store_id: Some(id.into()),
            opens,
        }
    }

    #[test]
    fn a_missing_or_empty_file_is_refused_where_a_marker_says_a_store_was() {
        assert_eq!(plan_open(true, OnDisk::Missing), Err(Refusal::Missing));
        assert_eq!(plan_open(true, OnDisk::Empty), Err(Refusal::Empty));
        assert_eq!(plan_open(true, OnDisk::Present), Ok(OpenPlan::Open));
    }

    #[test]
    fn without_a_marker_a_missing_or_empty_file_starts_a_new_store() {
        assert_eq!(plan_open(false, OnDisk::Missing), Ok(OpenPlan::Create));
        assert_eq!(plan_open(false, OnDisk::Empty), Ok(OpenPlan::Open));
        assert_eq!(plan_open(false, OnDisk::Present), Ok(OpenPlan::Open));
    }

    #[test]
    fn a_blank_file_is_new_only_without_a_marker() {
        assert_eq!(
            plan_identity(None, &Contents::Blank),
            Ok(IdentityPlan::New(NewIdentity::Created))
        );
        assert_eq!(
            plan_identity(Some(&marker("a", 1)), &Contents::Blank),
            Err(Refusal::Blank)
        );
    }

    #[test]
    fn the_same_store_keeps_its_identity() {
        let m = marker("a", 4);
        assert_eq!(
            plan_identity(Some(&m), &Contents::Identified(meta("a", 4))),
            Ok(IdentityPlan::Keep("a".into()))
        );
        // A crash after the file counted an open but before the marker did.
        assert_eq!(
            plan_identity(Some(&m), &Contents::Identified(meta("a", 5))),
            Ok(IdentityPlan::Keep("a".into()))
        );
    }

    #[test]
    fn an_older_copy_or_another_store_gets_a_new_identity() {
        assert_eq!(
            plan_identity(Some(&marker("a", 4)), &Contents::Identified(meta("a", 2))),
            Ok(IdentityPlan::New(NewIdentity::Restored {
                file_opens: 2,
                marker_opens: 4
            }))
        );
        assert_eq!(
            plan_identity(Some(&marker("a", 4)), &Contents::Identified(meta("b", 9))),
            Ok(IdentityPlan::New(NewIdentity::Replaced {
                file_id: "b".into(),
                marker_id: Some("a".into())
            }))
        );
        let unreadable = Marker {
            store_id: None,
            opens: 0,
        };
        assert!(matches!(
            plan_identity(Some(&unreadable), &Contents::Identified(meta("b", 9))),
            Ok(IdentityPlan::New(NewIdentity::Replaced { .. }))
        ));
        assert_eq!(
            plan_identity(None, &Contents::Identified(meta("b", 9))),
            Ok(IdentityPlan::New(NewIdentity::Unmarked {
                file_id: "b".into()
            }))
        );
    }

    #[test]
    fn a_store_from_before_identities_is_given_one() {
        for m in [None, Some(marker("a", 3))] {
            assert_eq!(
                plan_identity(m.as_ref(), &Contents::Legacy),
                Ok(IdentityPlan::New(NewIdentity::Upgraded))
            );
        }
    }

    #[test]
    fn marker_text_round_trips_and_garbage_still_counts() {
        let id = new_store_id();
        assert_eq!(id.len(), 32);
        assert_ne!(id, new_store_id());
        assert_eq!(parse_marker(&format_marker(&id, 7)), marker(&id, 7));
        assert_eq!(
            parse_marker("store_id=xyz\nopens=many\n"),
            Marker {
                store_id: None,
                opens: 0
            }
        );
    }

    #[test]
    fn marker_is_written_private_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = marker_path(&dir.path().join("coordinator.redb"));
        assert_eq!(path, dir.path().join("coordinator.id"));
        assert_eq!(read_marker(&path).expect("read"), None);
        let id = new_store_id();
        write_marker(&path, &id, 2).expect("write");
        write_marker(&path, &id, 3).expect("rewrite");
        assert_eq!(read_marker(&path).expect("read"), Some(marker(&id, 3)));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
