//! Job ids, the object keys derived from them, the conversion options on the wire, and the failure
//! marker: the names in ARCHITECTURE.md's contracts, defined once.
//!
//! Keys: results under `gray/<job_id>.jpg` (or `.png`), staged uploads under `staging/<job_id>`,
//! failure markers under `failed/<job_id>.json`. Job ids are random (UUIDv4), so keys spread over S3
//! prefixes and two uploads never share a result, whatever their names or contents.

use cloudimg_engine::{Limits, Options, OutputFormat, Quality};
use serde::{Deserialize, Serialize};

use crate::proto;

pub const RESULT_PREFIX: &str = "gray/";
pub const STAGING_PREFIX: &str = "staging/";
pub const FAILED_PREFIX: &str = "failed/";

/// A job's id: a random UUID in its hyphenated lowercase form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JobId(uuid::Uuid);

impl JobId {
    pub fn random() -> JobId {
        JobId(uuid::Uuid::new_v4())
    }

    /// Accepts only the hyphenated form this crate prints, so an id can never smuggle a path
    /// separator into a key.
    pub fn parse(text: &str) -> Result<JobId, String> {
        if text.len() != 36 {
            return Err(format!(
                "a job id is a 36-character UUID, found {:?}",
                truncate(text)
            ));
        }
        uuid::Uuid::try_parse(text)
            .map(JobId)
            .map_err(|e| format!("a job id is a UUID, found {:?}: {e}", truncate(text)))
    }

    /// Where this job's result goes.
    pub fn result_key(&self, format: OutputFormat) -> String {
        format!("{RESULT_PREFIX}{self}.{}", format.extension())
    }

    /// Where this job's upload is staged when it is too large to travel inline.
    pub fn staging_key(&self) -> String {
        format!("{STAGING_PREFIX}{self}")
    }

    /// Where the worker writes the reason when it dead-letters this job.
    pub fn failure_key(&self) -> String {
        format!("{FAILED_PREFIX}{self}.json")
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

fn truncate(text: &str) -> &str {
    match text.char_indices().nth(40) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// The output format a wire option asks for.
pub fn output_format(options: &proto::ConvertOptions) -> OutputFormat {
    match options.format() {
        proto::OutputFormat::Png => OutputFormat::Png,
        proto::OutputFormat::Jpeg => OutputFormat::Jpeg,
    }
}

/// Turns wire options into engine options, with the deployment's limits.
pub fn engine_options(options: &proto::ConvertOptions, limits: Limits) -> Result<Options, String> {
    let quality = if options.source_quality {
        Quality::Source
    } else {
        match options.quality {
            0 => Quality::DEFAULT,
            q @ 1..=100 => Quality::Level(q as u8),
            q => return Err(format!("quality must be 1 to 100, found {q}")),
        }
    };
    Ok(Options {
        quality,
        format: output_format(options),
        limits,
        ..Options::default()
    })
}

/// Turns engine options into wire options (the client's side).
pub fn wire_options(quality: Quality, format: OutputFormat) -> proto::ConvertOptions {
    let (quality, source_quality) = match quality {
        Quality::Level(q) => (u32::from(q), false),
        Quality::Source => (0, true),
    };
    proto::ConvertOptions {
        quality,
        source_quality,
        format: match format {
            OutputFormat::Jpeg => proto::OutputFormat::Jpeg,
            OutputFormat::Png => proto::OutputFormat::Png,
        } as i32,
    }
}

/// Why a job failed for good, by who must act: the one vocabulary of the dead-letter header
/// `x-cloudimg-error-kind`, the `failed/` marker's `kind` and the `cloudimg_job_errors_total`
/// metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The sender's file is corrupt or truncated.
    Invalid,
    /// A file type or feature the engine does not convert.
    Unsupported,
    /// Over a configured limit (bytes, pixels, dimensions, scans), found from the header.
    OverLimit,
    /// Would need more memory than the worker's whole budget (`CLOUDIMG_MEMORY_BUDGET`).
    OverBudget,
    /// Still converting after `CLOUDIMG_JOB_TIMEOUT`.
    Timeout,
    /// The store refuses this job's objects for good (metadata, size).
    Store,
    /// The engine failed on input it accepted: a bug to report.
    Internal,
    /// The message itself is unusable (not an `ImageJob`, a bad id, a key that is not its own).
    BadMessage,
}

impl FailureKind {
    /// The stable lowercase name used on the wire and in markers.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Invalid => "invalid",
            FailureKind::Unsupported => "unsupported",
            FailureKind::OverLimit => "over_limit",
            FailureKind::OverBudget => "over_budget",
            FailureKind::Timeout => "timeout",
            FailureKind::Store => "store",
            FailureKind::Internal => "internal",
            FailureKind::BadMessage => "bad_message",
        }
    }
}

impl From<cloudimg_engine::ErrorKind> for FailureKind {
    fn from(kind: cloudimg_engine::ErrorKind) -> Self {
        match kind {
            cloudimg_engine::ErrorKind::Invalid => FailureKind::Invalid,
            cloudimg_engine::ErrorKind::Unsupported => FailureKind::Unsupported,
            cloudimg_engine::ErrorKind::OverLimit => FailureKind::OverLimit,
            cloudimg_engine::ErrorKind::Internal => FailureKind::Internal,
            // The worker cancels a conversion only when its job timed out.
            cloudimg_engine::ErrorKind::Cancelled => FailureKind::Timeout,
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON the worker writes to `failed/<job_id>.json` when it dead-letters a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureMarker {
    pub job_id: String,
    /// A [`FailureKind`]'s name.
    pub kind: String,
    pub error: String,
    pub source_name: String,
    pub failed_unix_ms: i64,
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The longest `source-name` metadata value written: S3 allows 2 KB of user metadata in all, and
/// the other entries (job id, width, height and the names) take under 100 bytes.
pub const SOURCE_NAME_METADATA_MAX: usize = 1024;

/// A file name as the `source-name` metadata: percent-encoded, and cut (at a character
/// boundary, marked with a trailing `%E2%80%A6`, an ellipsis) so it never exceeds
/// [`SOURCE_NAME_METADATA_MAX`] bytes, whatever the sender named the file.
pub fn source_name_metadata(name: &str) -> String {
    let encoded = percent_encode(name);
    if encoded.len() <= SOURCE_NAME_METADATA_MAX {
        return encoded;
    }
    let ellipsis = percent_encode("…");
    let mut out = String::with_capacity(SOURCE_NAME_METADATA_MAX);
    for c in name.chars() {
        let piece = percent_encode(c.encode_utf8(&mut [0; 4]));
        if out.len() + piece.len() + ellipsis.len() > SOURCE_NAME_METADATA_MAX {
            break;
        }
        out.push_str(&piece);
    }
    out.push_str(&ellipsis);
    out
}

/// Percent-encodes everything outside RFC 3986's unreserved set, so any file name fits S3's
/// ASCII-only metadata (`source-name`).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The inverse of [`percent_encode`] (lenient: a malformed escape is kept as it is).
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_contract() {
        let id = JobId::parse("0b8e2c1a-3f4d-4e5f-8a9b-0c1d2e3f4a5b").unwrap();
        assert_eq!(
            id.result_key(OutputFormat::Jpeg),
            "gray/0b8e2c1a-3f4d-4e5f-8a9b-0c1d2e3f4a5b.jpg"
        );
        assert_eq!(
            id.result_key(OutputFormat::Png),
            "gray/0b8e2c1a-3f4d-4e5f-8a9b-0c1d2e3f4a5b.png"
        );
        assert_eq!(
            id.staging_key(),
            "staging/0b8e2c1a-3f4d-4e5f-8a9b-0c1d2e3f4a5b"
        );
        assert_eq!(
            id.failure_key(),
            "failed/0b8e2c1a-3f4d-4e5f-8a9b-0c1d2e3f4a5b.json"
        );
    }

    #[test]
    fn random_ids_differ_and_round_trip() {
        let a = JobId::random();
        let b = JobId::random();
        assert_ne!(a, b);
        assert_eq!(JobId::parse(&a.to_string()).unwrap(), a);
    }

    #[test]
    fn job_ids_refuse_paths_and_other_forms() {
        for bad in [
            "",
            "../../etc/passwd",
            "0b8e2c1a3f4d4e5f8a9b0c1d2e3f4a5b",
            "0b8e2c1a-3f4d-4e5f-8a9b-0c1d2e3f4a5/",
        ] {
            assert!(JobId::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn wire_options_round_trip_through_engine_options() {
        for (q, f) in [
            (Quality::Level(85), OutputFormat::Jpeg),
            (Quality::Level(1), OutputFormat::Png),
            (Quality::Source, OutputFormat::Jpeg),
        ] {
            let o = engine_options(&wire_options(q, f), Limits::default()).unwrap();
            assert_eq!((o.quality, o.format), (q, f));
        }
        let zero = proto::ConvertOptions::default();
        assert_eq!(
            engine_options(&zero, Limits::default()).unwrap().quality,
            Quality::DEFAULT
        );
        let bad = proto::ConvertOptions {
            quality: 101,
            ..Default::default()
        };
        assert!(engine_options(&bad, Limits::default()).is_err());
    }

    #[test]
    fn source_names_are_cut_to_fit_s3_metadata_at_a_character_boundary() {
        assert_eq!(source_name_metadata("photo 1.jpg"), "photo%201.jpg");
        for name in [
            "é".repeat(3000),
            "a".repeat(5000),
            format!("{}.jpg", "✓".repeat(700)),
        ] {
            let meta = source_name_metadata(&name);
            assert!(meta.len() <= SOURCE_NAME_METADATA_MAX, "{}", meta.len());
            let decoded = percent_decode(&meta);
            let kept = decoded
                .strip_suffix('…')
                .expect("cut names end with an ellipsis");
            assert!(name.starts_with(kept) && kept.len() > 300, "{}", kept.len());
        }
    }

    #[test]
    fn percent_encoding_round_trips_any_name() {
        for name in [
            "photo.jpg",
            "my photo (1).JPG",
            "été/überall ✓.png",
            "100%.jpg",
        ] {
            let enc = percent_encode(name);
            assert!(
                enc.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'/' && b != b' ')
            );
            assert_eq!(percent_decode(&enc), name);
        }
    }
}
