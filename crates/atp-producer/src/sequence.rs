//! [`Sequencer`]: the `sequence` a producer gives its events, strictly increasing across
//! restarts.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Sequences taken from a file at a time: one durable write per this many events.
const BLOCK: u64 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum SequenceError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} does not hold a sequence (a decimal integer)")]
    Corrupt { path: PathBuf },
    #[error("the sequence is exhausted")]
    Exhausted,
}

/// Numbers a producer's events 1, 2, 3, … (or on from where it was).
///
/// In memory ([`Sequencer::starting_after`]), the numbers restart when the process does, so
/// the caller must pass where it was. With a file ([`Sequencer::file`]), a restarted
/// producer goes on above every number it ever handed out. The file holds the end of a block
/// of numbers reserved with one durable write (write, `fsync`, rename), so a crash skips at
/// most the rest of a block: gaps are allowed, going back is not.
#[derive(Debug)]
pub struct Sequencer {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    next: u64,
    /// The first number not yet reserved in the file (`None`: in memory).
    reserved: Option<(PathBuf, u64)>,
}

impl Sequencer {
    /// Hands out `last + 1`, `last + 2`, … (in memory).
    pub fn starting_after(last: u64) -> Sequencer {
        Sequencer {
            state: Mutex::new(State {
                next: last.saturating_add(1),
                reserved: None,
            }),
        }
    }

    /// Hands out numbers above every number handed out with this file before (made if
    /// missing; its directory must exist).
    pub fn file(path: impl AsRef<Path>) -> Result<Sequencer, SequenceError> {
        let path = path.as_ref().to_owned();
        let io = |source| SequenceError::Io {
            path: path.clone(),
            source,
        };
        let next = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|_| SequenceError::Corrupt { path: path.clone() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(e) => return Err(io(e)),
        };
        Ok(Sequencer {
            state: Mutex::new(State {
                next,
                reserved: Some((path, next)),
            }),
        })
    }

    /// The next number. With a file, every `BLOCK`th call waits for one durable write.
    pub fn next(&self) -> Result<u64, SequenceError> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let n = s.next;
        let after = n.checked_add(1).ok_or(SequenceError::Exhausted)?;
        if let Some((path, reserved)) = &s.reserved
            && n >= *reserved
        {
            let end = n.checked_add(BLOCK).ok_or(SequenceError::Exhausted)?;
            write_durably(path, end)?;
            s.reserved = Some((path.clone(), end));
        }
        s.next = after;
        Ok(n)
    }
}

fn write_durably(path: &Path, value: u64) -> Result<(), SequenceError> {
    let io = |source| SequenceError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(format!("{value}\n").as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_memory_it_counts_on_from_where_it_is_told() {
        let s = Sequencer::starting_after(41);
        assert_eq!(s.next().unwrap(), 42);
        assert_eq!(s.next().unwrap(), 43);
        let end = Sequencer::starting_after(u64::MAX - 2);
        assert_eq!(end.next().unwrap(), u64::MAX - 1);
        assert!(matches!(end.next(), Err(SequenceError::Exhausted)));
    }

    #[test]
    fn with_a_file_a_restart_goes_on_above_every_number_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crm.seq");
        let first = Sequencer::file(&path).unwrap();
        let handed: Vec<u64> = (0..BLOCK + 5).map(|_| first.next().unwrap()).collect();
        assert_eq!(handed[0], 1);
        assert!(handed.windows(2).all(|w| w[1] == w[0] + 1));
        // A crash now: the next process starts above the last number handed out.
        drop(first);
        let again = Sequencer::file(&path).unwrap();
        let n = again.next().unwrap();
        assert!(n > *handed.last().unwrap(), "{n}");
        // And the file never holds anything but the reservation.
        std::fs::write(&path, "not a number").unwrap();
        assert!(matches!(
            Sequencer::file(&path),
            Err(SequenceError::Corrupt { .. })
        ));
    }
}
