//! Image commands: `images`/`image ls`, `tag`, `rmi`, `import`, `image inspect`,
//! `history`, `image prune`.

use std::collections::BTreeMap;
use std::io;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use vessel_image::manifest::Platform;
use vessel_image::store::{ImageSummary, ImportOptions, RemoveEvent, RemoveOptions, Store};
use vessel_image::Reference;

use crate::format::{self, Format};

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// List images
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Display detailed information on one or more images
    Inspect(InspectArgs),
    /// Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE
    Tag(TagArgs),
    /// Remove one or more images
    #[command(alias = "remove")]
    Rm(RmiArgs),
    /// Import the contents from a tarball to create a filesystem image
    Import(ImportArgs),
    /// Show the history of an image
    History(HistoryArgs),
    /// Remove unused images
    Prune(PruneArgs),
    /// Save one or more images to a tar archive
    Save(SaveArgs),
    /// Load an image from a tar archive or STDIN
    Load(LoadArgs),
    /// Download an image from a registry
    Pull(super::registry::PullArgs),
    /// Upload an image to a registry
    Push(super::registry::PushArgs),
}

pub fn run(cmd: ImageCommand, store: Store) -> Result<ExitCode> {
    let store_owned = store;
    let store = &store_owned;
    match cmd {
        ImageCommand::Ls(a) => list(a, store),
        ImageCommand::Inspect(a) => inspect(a, store),
        ImageCommand::Tag(a) => tag(a, store),
        ImageCommand::Rm(a) => rmi(a, store),
        ImageCommand::Import(a) => import(a, store_owned),
        ImageCommand::History(a) => history(a, store),
        ImageCommand::Prune(a) => prune(a, store),
        ImageCommand::Save(a) => save(a, store),
        ImageCommand::Load(a) => load(a, store),
        ImageCommand::Pull(a) => super::registry::pull(a, store_owned),
        ImageCommand::Push(a) => super::registry::push(a, store_owned),
    }
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Show all images (default hides intermediate images)
    #[arg(short, long)]
    all: bool,
    /// Only show image IDs
    #[arg(short, long)]
    quiet: bool,
    /// Show digests
    #[arg(long)]
    digests: bool,
    /// Don't truncate output
    #[arg(long)]
    no_trunc: bool,
    /// Filter output based on conditions provided
    #[arg(short, long)]
    filter: Vec<String>,
    /// Format output using a custom template ('table', 'table TEMPLATE', 'json', 'TEMPLATE')
    #[arg(long)]
    format: Option<String>,
    /// Repository[:tag] to list
    repository: Option<String>,
}

enum Filter {
    Dangling(bool),
    Reference(String),
    Label(String, Option<String>),
    Before(String),
    Since(String),
}

fn parse_filters(raw: &[String], extra_ref: Option<&String>) -> Result<Vec<Filter>> {
    let mut out = Vec::new();
    for f in raw {
        let (k, v) = f
            .split_once('=')
            .with_context(|| format!("bad format of filter (expected name=value): {f}"))?;
        out.push(match k {
            "dangling" => match v {
                "true" | "1" => Filter::Dangling(true),
                "false" | "0" => Filter::Dangling(false),
                _ => bail!("invalid filter 'dangling={v}'"),
            },
            "reference" => Filter::Reference(v.to_string()),
            "label" => match v.split_once('=') {
                Some((lk, lv)) => Filter::Label(lk.to_string(), Some(lv.to_string())),
                None => Filter::Label(v.to_string(), None),
            },
            "before" => Filter::Before(v.to_string()),
            "since" => Filter::Since(v.to_string()),
            _ => bail!("invalid filter '{k}'"),
        });
    }
    if let Some(r) = extra_ref {
        out.push(Filter::Reference(r.clone()));
    }
    Ok(out)
}

/// Shell-style `*` and `?` matching (Go's path.Match without classes), `*` not crossing `/`.
fn glob(pat: &str, s: &str) -> bool {
    fn m(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => m(&p[1..], s) || (!s.is_empty() && s[0] != b'/' && m(p, &s[1..])),
            (Some(b'?'), Some(c)) if *c != b'/' => m(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => m(&p[1..], &s[1..]),
            _ => false,
        }
    }
    m(pat.as_bytes(), s.as_bytes())
}

fn keep(img: &ImageSummary, filters: &[Filter], store: &Store) -> Result<bool> {
    for f in filters {
        let ok = match f {
            // docker: dangling=true is every untagged image (digest-only ones too);
            // dangling=false drops only those with neither tag nor digest.
            Filter::Dangling(true) => img.dangling,
            Filter::Dangling(false) => img.repository.is_some(),
            Filter::Reference(p) => img.repository.as_ref().is_some_and(|r| {
                let with_tag = format!("{r}:{}", img.tag.as_deref().unwrap_or(""));
                glob(p, r) || glob(p, &with_tag)
            }),
            Filter::Label(k, v) => match (img.labels.get(k), v) {
                (Some(actual), Some(v)) => actual.as_str() == Some(v.as_str()),
                (Some(_), None) => true,
                (None, _) => false,
            },
            Filter::Before(r) | Filter::Since(r) => {
                let id = store.lookup(r)?;
                let other = store
                    .images()?
                    .into_iter()
                    .find(|i| i.id == id)
                    .and_then(|i| i.created);
                match (img.created, other) {
                    (Some(a), Some(b)) => {
                        if matches!(f, Filter::Before(_)) {
                            a < b
                        } else {
                            a > b
                        }
                    }
                    _ => false,
                }
            }
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

pub fn list(a: ListArgs, store: &Store) -> Result<ExitCode> {
    let filters = parse_filters(&a.filter, a.repository.as_ref())?;
    let mut rows = Vec::new();
    for img in store.images()? {
        // As docker: untagged top-level images show as <none>:<none> either way; the
        // untagged parents of other images only with -a.
        if img.intermediate && !a.all {
            continue;
        }
        if keep(&img, &filters, store)? {
            rows.push(img);
        }
    }
    rows.sort_by(|x, y| {
        y.created
            .cmp(&x.created)
            .then(x.repository.cmp(&y.repository))
            .then(x.tag.cmp(&y.tag))
    });
    if a.quiet {
        let mut seen = std::collections::HashSet::new();
        for r in &rows {
            let id = if a.no_trunc {
                r.id.to_string()
            } else {
                r.id.short().to_string()
            };
            if seen.insert(id.clone()) {
                println!("{id}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let fields: Vec<BTreeMap<&str, String>> = rows
        .iter()
        .map(|r| {
            let mut m = BTreeMap::new();
            m.insert(
                "ID",
                if a.no_trunc {
                    r.id.to_string()
                } else {
                    r.id.short().to_string()
                },
            );
            m.insert(
                "Repository",
                r.repository.clone().unwrap_or_else(|| "<none>".into()),
            );
            m.insert("Tag", r.tag.clone().unwrap_or_else(|| "<none>".into()));
            m.insert(
                "Digest",
                r.digest
                    .as_ref()
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| "<none>".into()),
            );
            m.insert("CreatedSince", format::since(r.created));
            m.insert(
                "CreatedAt",
                r.created
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S %z UTC").to_string())
                    .unwrap_or_default(),
            );
            m.insert("Size", format::human_size(r.size));
            m.insert("VirtualSize", format::human_size(r.size));
            m.insert("SharedSize", "N/A".into());
            m.insert("UniqueSize", "N/A".into());
            m.insert("Containers", "N/A".into());
            m
        })
        .collect();
    let mut cols = vec!["{{.Repository}}", "{{.Tag}}"];
    if a.digests {
        cols.push("{{.Digest}}");
    }
    cols.extend(["{{.ID}}", "{{.CreatedSince}}", "{{.Size}}"]);
    let header: BTreeMap<&str, &str> = [
        ("ID", "IMAGE ID"),
        ("Repository", "REPOSITORY"),
        ("Tag", "TAG"),
        ("Digest", "DIGEST"),
        ("CreatedSince", "CREATED"),
        ("CreatedAt", "CREATED AT"),
        ("Size", "SIZE"),
        ("VirtualSize", "VIRTUAL SIZE"),
        ("SharedSize", "SHARED SIZE"),
        ("UniqueSize", "UNIQUE SIZE"),
        ("Containers", "CONTAINERS"),
    ]
    .into_iter()
    .collect();
    match Format::parse(a.format.as_deref(), &cols) {
        Format::Table(cols) => format::print_rows(&cols.join("\t"), true, &header, &fields),
        Format::Template(t, table) => format::print_rows(&t, table, &header, &fields),
        Format::Json => format::print_rows("{{json .}}", false, &header, &fields),
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct TagArgs {
    source: String,
    target: String,
}

pub fn tag(a: TagArgs, store: &Store) -> Result<ExitCode> {
    store.tag(&a.source, &a.target)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct RmiArgs {
    /// Force removal of the image
    #[arg(short, long)]
    force: bool,
    /// Do not delete untagged parents
    #[arg(long)]
    no_prune: bool,
    #[arg(required = true)]
    images: Vec<String>,
}

fn print_events(events: &[RemoveEvent]) {
    for e in events {
        match e {
            RemoveEvent::Untagged(n) => println!("Untagged: {n}"),
            RemoveEvent::Deleted(d) => println!("Deleted: {d}"),
        }
    }
}

pub fn rmi(a: RmiArgs, store: &Store) -> Result<ExitCode> {
    let opts = RemoveOptions {
        force: a.force,
        no_prune: a.no_prune,
    };
    let mut code = ExitCode::SUCCESS;
    for name in &a.images {
        match store.remove(name, opts) {
            Ok(ev) => print_events(&ev),
            Err(e) => {
                eprintln!("Error response from daemon: {e}");
                code = ExitCode::from(1);
            }
        }
    }
    Ok(code)
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Apply Dockerfile instruction to the created image
    #[arg(short, long)]
    change: Vec<String>,
    /// Set commit message for imported image
    #[arg(short, long)]
    message: Option<String>,
    /// Set platform if server is multi-platform capable
    #[arg(long)]
    platform: Option<String>,
    /// The rootfs tarball: a file, - for stdin, or an http(s) URL
    file: String,
    /// REPOSITORY[:TAG]
    reference: Option<String>,
}

pub fn import(a: ImportArgs, store: Store) -> Result<ExitCode> {
    let is_url = vessel_image::url_import::is_url(&a.file);
    let opts = ImportOptions {
        reference: a.reference.as_deref().map(Reference::parse).transpose()?,
        // docker's default comment; it streams files as "-", so they say "-" too.
        message: Some(a.message.unwrap_or_else(|| {
            format!(
                "Imported from {}",
                if is_url { a.file.as_str() } else { "-" }
            )
        })),
        changes: a.change,
        platform: a.platform.as_deref().map(Platform::parse).transpose()?,
    };
    let id = if is_url {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(vessel_image::url_import::import_url(
                std::sync::Arc::new(store),
                &a.file,
                opts,
            ))?
    } else if a.file == "-" {
        store.import(io::stdin().lock(), &opts)?
    } else {
        let f = std::fs::File::open(&a.file).with_context(|| format!("open {}", a.file))?;
        store.import(f, &opts)?
    };
    println!("{id}");
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Format output using a custom template
    #[arg(short, long)]
    format: Option<String>,
    /// Type of object (only "image" is known here)
    #[arg(long = "type")]
    kind: Option<String>,
    #[arg(required = true)]
    names: Vec<String>,
}

pub fn inspect(a: InspectArgs, store: &Store) -> Result<ExitCode> {
    if let Some(k) = &a.kind {
        if k != "image" {
            bail!("unsupported --type {k:?} (only images can be inspected yet)");
        }
    }
    let mut out = Vec::new();
    let mut code = ExitCode::SUCCESS;
    for n in &a.names {
        match store.inspect(n) {
            Ok(v) => out.push(v),
            Err(e) => {
                eprintln!("Error: {e}");
                code = ExitCode::from(1);
            }
        }
    }
    match a.format.as_deref() {
        None | Some("json") => println!("{}", serde_json::to_string_pretty(&out)?),
        Some(t) => {
            for v in &out {
                println!("{}", render_value(t, v));
            }
        }
    }
    Ok(code)
}

/// `{{.Id}}`, `{{.Config.Cmd}}`, `{{json .RootFS}}` against inspect JSON.
fn render_value(template: &str, v: &serde_json::Value) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find("}}") else {
            break;
        };
        let expr = rest[start + 2..start + end].trim();
        let (json, path) = match expr.strip_prefix("json ") {
            Some(p) => (true, p.trim()),
            None => (false, expr),
        };
        let ptr = path.trim_start_matches('.').replace('.', "/");
        let val = if ptr.is_empty() {
            Some(v)
        } else {
            v.pointer(&format!("/{ptr}"))
        };
        let s = match val {
            Some(serde_json::Value::String(s)) if !json => s.clone(),
            Some(x) if json => serde_json::to_string(x).unwrap_or_default(),
            Some(serde_json::Value::Array(a)) => {
                format!(
                    "[{}]",
                    a.iter()
                        .map(|x| x
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| x.to_string()))
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            }
            Some(serde_json::Value::Null) => "<nil>".into(),
            Some(x) => x.to_string(),
            None => "<no value>".into(),
        };
        out.push_str(&s);
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    out.replace("\\n", "\n").replace("\\t", "\t")
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Print sizes and dates in human readable format
    #[arg(short = 'H', long, default_value_t = true, action = clap::ArgAction::Set)]
    human: bool,
    /// Don't truncate output
    #[arg(long)]
    no_trunc: bool,
    /// Only show image IDs
    #[arg(short, long)]
    quiet: bool,
    image: String,
}

pub fn history(a: HistoryArgs, store: &Store) -> Result<ExitCode> {
    let rows = store.history(&a.image)?;
    let id = |r: &vessel_image::store::HistoryRow| match &r.id {
        Some(d) if a.no_trunc => d.to_string(),
        Some(d) => d.short().to_string(),
        None => "<missing>".into(),
    };
    if a.quiet {
        for r in &rows {
            println!("{}", id(r));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut cells = vec![vec![
        "IMAGE".into(),
        "CREATED".into(),
        "CREATED BY".into(),
        "SIZE".into(),
        "COMMENT".into(),
    ]];
    for r in &rows {
        let mut by = r.created_by.clone();
        if !a.no_trunc && by.chars().count() > 45 {
            by = by.chars().take(44).collect::<String>() + "…";
        }
        let created = if a.human {
            format::since(r.created)
        } else {
            r.created.map(|t| t.to_rfc3339()).unwrap_or_default()
        };
        let size = if a.human {
            format::human_size(r.size)
        } else {
            r.size.to_string()
        };
        cells.push(vec![id(r), created, by, size, r.comment.clone()]);
    }
    print!("{}", format::table(&cells));
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Remove all unused images, not just dangling ones
    #[arg(short, long)]
    all: bool,
    /// Do not prompt for confirmation
    #[arg(short, long)]
    force: bool,
}

pub fn prune(a: PruneArgs, store: &Store) -> Result<ExitCode> {
    if !a.force && atty_stdin() {
        let what = if a.all {
            "all images without at least one container associated to them"
        } else {
            "all dangling images"
        };
        eprint!("WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ");
        let mut line = String::new();
        io::stdin().read_line(&mut line)?;
        if !matches!(line.trim(), "y" | "Y" | "yes") {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let report = store.prune(a.all)?;
    if !report.events.is_empty() {
        println!("Deleted Images:");
        for e in &report.events {
            match e {
                RemoveEvent::Untagged(n) => println!("untagged: {n}"),
                RemoveEvent::Deleted(d) => println!("deleted: {d}"),
            }
        }
        println!();
    }
    println!(
        "Total reclaimed space: {}",
        format::human_size(report.reclaimed)
    );
    Ok(ExitCode::SUCCESS)
}

fn atty_stdin() -> bool {
    use std::io::IsTerminal;
    io::stdin().is_terminal()
}

#[derive(Args, Debug)]
pub struct SaveArgs {
    /// Write to a file, instead of STDOUT
    #[arg(short, long)]
    output: Option<std::path::PathBuf>,
    /// Archive format: docker-archive (default) or oci-archive
    #[arg(long, default_value = "docker-archive")]
    format: String,
    #[arg(required = true)]
    images: Vec<String>,
}

pub fn save(a: SaveArgs, store: &Store) -> Result<ExitCode> {
    use std::io::IsTerminal;
    let format = vessel_image::archive::ArchiveFormat::parse(&a.format)?;
    match &a.output {
        Some(path) => {
            // Written beside the target and renamed, so a failed save leaves no half file.
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let tmp = tempfile::NamedTempFile::new_in(dir)
                .with_context(|| format!("creating a file in {}", dir.display()))?;
            vessel_image::archive::save(
                store,
                &a.images,
                format,
                io::BufWriter::new(tmp.as_file()),
            )?;
            tmp.persist(path)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        None => {
            if io::stdout().is_terminal() {
                bail!("cowardly refusing to save to a terminal. Use the -o flag or redirect");
            }
            vessel_image::archive::save(
                store,
                &a.images,
                format,
                io::BufWriter::new(io::stdout().lock()),
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Read from tar archive file, instead of STDIN
    #[arg(short, long)]
    input: Option<std::path::PathBuf>,
    /// Suppress the load output
    #[arg(short, long)]
    quiet: bool,
}

pub fn load(a: LoadArgs, store: &Store) -> Result<ExitCode> {
    let loaded = match &a.input {
        Some(p) => vessel_image::archive::load(
            store,
            std::fs::File::open(p).with_context(|| format!("open {}", p.display()))?,
        )?,
        None => vessel_image::archive::load(store, io::stdin().lock())?,
    };
    if !a.quiet {
        for l in loaded {
            match l {
                vessel_image::archive::Loaded::Name(n) => println!("Loaded image: {n}"),
                vessel_image::archive::Loaded::Id(d) => println!("Loaded image ID: {d}"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
