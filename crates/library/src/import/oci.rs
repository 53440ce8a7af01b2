//! Importing a container image: a `docker save` / `podman save` archive (docker-archive), an
//! OCI archive (oci-archive) or an OCI image layout directory, as one snapshot.
//!
//! The image's layers are applied in order by [`super::tar::import_layers`] (whiteouts and
//! opaque directories as overlayfs applies them). Every byte is checked on the way: the
//! manifest and config of an OCI image by their digests from the index and the manifest, and
//! every layer, after decompression, by its `diff_id` from the config (which is how a
//! docker-archive names its layers' content too). The image's run settings (entrypoint, cmd,
//! env, user, working directory) and its tag go into the snapshot's note.
//!
//! An archive is read in place (it must be a plain, seekable tar file): one pass over its
//! headers finds its members, then each layer is read from its offset.

use super::tar::{decompressed, import_layers};
use super::{ImportOptions, Imported};
use crate::{Error, Library, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The largest JSON document (index, manifest, config) read from an image.
const MAX_JSON: u64 = 16 << 20;

/// A container image found at a path, ready to import.
pub struct Image {
    blobs: Blobs,
    /// The layers' member names (or blob paths), bottom first, with their uncompressed digests.
    layers: Vec<(String, String)>,
    /// What goes into the snapshot's note.
    note: String,
}

/// Where an image's files are.
enum Blobs {
    /// Members of a tar archive: name → (offset, size).
    Archive(PathBuf, HashMap<String, (u64, u64)>),
    /// Files of an OCI layout directory.
    Dir(PathBuf),
}

impl Image {
    /// The image at `path`, or `None` when `path` is not one (a plain directory or tar of
    /// files, for the other importers). An image that is damaged or unsupported is an error.
    pub fn find(path: &Path) -> Result<Option<Image>> {
        let md = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
        let blobs = if md.is_dir() {
            if !path.join("oci-layout").is_file() {
                return Ok(None);
            }
            Blobs::Dir(path.to_path_buf())
        } else {
            match members(path)? {
                Some(m) if m.contains_key("manifest.json") || m.contains_key("oci-layout") => {
                    Blobs::Archive(path.to_path_buf(), m)
                }
                _ => return Ok(None),
            }
        };
        Image::read(blobs, path).map(Some)
    }

    /// Imports the image as one snapshot (its note: `opts.note`, then the image's settings).
    pub fn import(&self, lib: &Library, opts: &ImportOptions) -> Result<Imported> {
        let note = format!("{}; {}", opts.note, self.note);
        let opts = ImportOptions {
            author: opts.author.clone(),
            note,
            ..*opts
        };
        let layers = self.layers.iter().enumerate().map(|(i, (name, diff_id))| {
            let what = format!("image layer {} ({name})", i + 1);
            let plain = decompressed(self.blobs.open(name)?)?;
            let checked = Box::new(Checked::new(plain, diff_id)) as Box<dyn Read>;
            Ok((what, checked))
        });
        import_layers(lib, layers, &opts)
    }

    /// Reads the image's manifest and config.
    fn read(blobs: Blobs, path: &Path) -> Result<Image> {
        let (config, layer_names, tag) = if blobs.has("manifest.json") {
            // docker-archive: manifest.json names the config and the layers by member name.
            let m: Vec<DockerManifest> = blobs.json("manifest.json", None)?;
            let [m] = <[DockerManifest; 1]>::try_from(m).map_err(|m| {
                bad(
                    path,
                    format!("holds {} images; import one at a time", m.len()),
                )
            })?;
            let config: Config = blobs.json(&m.config, None)?;
            (config, m.layers, m.repo_tags.into_iter().next())
        } else {
            // OCI: index.json → manifest → config and layers, each by digest.
            let index: Index = blobs.json("index.json", None)?;
            let desc = index.pick(path)?;
            let tag = desc.tag();
            let manifest: Manifest =
                blobs.json(&blob_path(path, &desc.digest)?, Some(&desc.digest))?;
            let config: Config = blobs.json(
                &blob_path(path, &manifest.config.digest)?,
                Some(&manifest.config.digest),
            )?;
            let layers = manifest
                .layers
                .iter()
                .map(|l| blob_path(path, &l.digest))
                .collect::<Result<_>>()?;
            (config, layers, tag)
        };
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != layer_names.len() {
            return Err(bad(
                path,
                format!(
                    "its manifest lists {} layers but its config {}",
                    layer_names.len(),
                    diff_ids.len()
                ),
            ));
        }
        for name in &layer_names {
            if !blobs.has(name) {
                return Err(bad(path, format!("layer {name} is missing")));
            }
        }
        let note = config.note(tag.as_deref());
        Ok(Image {
            blobs,
            layers: layer_names
                .into_iter()
                .zip(diff_ids.iter().cloned())
                .collect(),
            note,
        })
    }
}

impl Blobs {
    fn has(&self, name: &str) -> bool {
        match self {
            Blobs::Archive(_, m) => m.contains_key(name),
            Blobs::Dir(d) => d.join(name).is_file(),
        }
    }

    /// A reader of file `name`.
    fn open(&self, name: &str) -> Result<Box<dyn Read>> {
        match self {
            Blobs::Archive(path, members) => {
                let &(offset, size) = members
                    .get(name)
                    .ok_or_else(|| bad(path, format!("has no member {name}")))?;
                let mut f = File::open(path).map_err(|e| io_err(path, e))?;
                f.seek(SeekFrom::Start(offset))
                    .map_err(|e| io_err(path, e))?;
                Ok(Box::new(io::BufReader::with_capacity(
                    1 << 20,
                    f.take(size),
                )))
            }
            Blobs::Dir(d) => {
                let p = d.join(name);
                let f = File::open(&p).map_err(|e| io_err(&p, e))?;
                Ok(Box::new(io::BufReader::with_capacity(1 << 20, f)))
            }
        }
    }

    /// File `name` parsed as JSON, checked against `digest` when one is given.
    fn json<T: for<'de> Deserialize<'de>>(&self, name: &str, digest: Option<&str>) -> Result<T> {
        let mut bytes = Vec::new();
        self.open(name)?
            .take(MAX_JSON)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::BadInput(format!("image file {name}: {e}")))?;
        if let Some(want) = digest {
            let got = sha256(&bytes);
            if got != want {
                return Err(Error::BadInput(format!(
                    "image file {name}: digest {got}, want {want} (the image is damaged)"
                )));
            }
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::BadInput(format!("image file {name}: {e}")))
    }
}

/// The members of the plain tar file at `path` (name → data offset and size), or `None` if it
/// is not a plain tar (compressed, or not a tar at all).
fn members(path: &Path) -> Result<Option<HashMap<String, (u64, u64)>>> {
    let f = File::open(path).map_err(|e| io_err(path, e))?;
    let mut head = [0u8; 512];
    let n = (&f)
        .take(512)
        .read(&mut head)
        .map_err(|e| io_err(path, e))?;
    if n < 512 || &head[257..262] != b"ustar" {
        return Ok(None);
    }
    (&f).seek(SeekFrom::Start(0)).map_err(|e| io_err(path, e))?;
    let mut archive = tar::Archive::new(f);
    let mut out = HashMap::new();
    for entry in archive.entries_with_seek().map_err(|e| io_err(path, e))? {
        let entry = entry.map_err(|e| io_err(path, e))?;
        let name = entry.path().map_err(|e| io_err(path, e))?;
        let name = name.to_string_lossy().trim_start_matches("./").to_string();
        out.insert(name, (entry.raw_file_position(), entry.size()));
    }
    Ok(Some(out))
}

/// `blobs/ALG/HEX` for a digest `ALG:HEX` (sha256 only).
fn blob_path(path: &Path, digest: &str) -> Result<String> {
    match digest.split_once(':') {
        Some(("sha256", hex)) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(format!("blobs/sha256/{hex}"))
        }
        _ => Err(bad(
            path,
            format!("unsupported digest {digest:?} (sha256 only)"),
        )),
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn bad(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::BadInput(format!("image {}: {what}", path.display()))
}

fn io_err(path: &Path, e: io::Error) -> Error {
    Error::BadInput(format!("image {}: {e}", path.display()))
}

/// A reader that hashes what passes and, at its end, fails unless the digest is `want`.
struct Checked<R> {
    inner: R,
    hash: Sha256,
    want: String,
}

impl<R: Read> Checked<R> {
    fn new(inner: R, want: &str) -> Self {
        Checked {
            inner,
            hash: Sha256::new(),
            want: want.to_string(),
        }
    }
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.hash.update(&buf[..n]);
        } else if !buf.is_empty() {
            let got = format!("sha256:{}", hex::encode(self.hash.clone().finalize()));
            if got != self.want {
                let want = &self.want;
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("content digest {got}, want {want} (the image is damaged)"),
                ));
            }
        }
        Ok(n)
    }
}

/// An entry of a docker-archive's `manifest.json`.
#[derive(Deserialize)]
struct DockerManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Vec<String>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// An OCI `index.json`.
#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

/// An OCI content descriptor.
#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: HashMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

/// An OCI image manifest.
#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// An image config (OCI and docker share these fields).
#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    config: RunConfig,
    rootfs: RootFs,
}

#[derive(Deserialize, Default)]
struct RunConfig {
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "User", default)]
    user: Option<String>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

impl Index {
    /// The one image manifest to import: the only one, or the one for this machine.
    fn pick(self, path: &Path) -> Result<Descriptor> {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            a => a,
        };
        let mut images: Vec<Descriptor> = self
            .manifests
            .into_iter()
            .filter(|d| !d.media_type.ends_with("image.index.v1+json"))
            .collect();
        if images.len() > 1 {
            images.retain(|d| {
                d.platform
                    .as_ref()
                    .is_none_or(|p| p.os == "linux" && p.architecture == arch)
            });
        }
        match images.len() {
            1 => Ok(images.remove(0)),
            0 => Err(bad(path, format!("has no image for linux/{arch}"))),
            n => Err(bad(path, format!("holds {n} images; import one at a time"))),
        }
    }
}

impl Descriptor {
    /// The image's tag, from the usual annotations.
    fn tag(&self) -> Option<String> {
        [
            "io.containerd.image.name",
            "org.opencontainers.image.ref.name",
        ]
        .iter()
        .find_map(|k| self.annotations.get(*k).cloned())
    }
}

impl Config {
    /// The image's tag and run settings as one line for the snapshot's note:
    /// `image TAG {"entrypoint":…,"cmd":…,"env":…,"user":…,"workdir":…}` (absent ones left out).
    fn note(&self, tag: Option<&str>) -> String {
        let c = &self.config;
        let mut settings = serde_json::Map::new();
        let mut put = |k: &str, v: serde_json::Value| {
            if !v.is_null() {
                settings.insert(k.into(), v);
            }
        };
        put("entrypoint", serde_json::json!(c.entrypoint));
        put("cmd", serde_json::json!(c.cmd));
        put("env", serde_json::json!(c.env));
        put(
            "user",
            serde_json::json!(c.user.as_deref().filter(|u| !u.is_empty())),
        );
        put(
            "workdir",
            serde_json::json!(c.working_dir.as_deref().filter(|w| !w.is_empty())),
        );
        format!(
            "image {} {}",
            tag.unwrap_or("(untagged)"),
            serde_json::Value::Object(settings)
        )
    }
}
