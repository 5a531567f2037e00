//! Web renderers packaged with their library (`export_extension!(..., web = "web")`): the
//! host reads the embedded files at load, says whether a library has a web renderer, and
//! refuses a library whose asset table is bad, naming the problem.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use extension_host::{Host, LoadError, MetadataProblem, WebPathProblem, check, web_assets_of};

use crate::support::{self, library};

/// Every file under `dir`, by its path relative to `dir` with `/` separators.
fn files_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(directory) = pending.pop() {
        for entry in std::fs::read_dir(&directory).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path.strip_prefix(dir).unwrap().to_str().unwrap().replace('\\', "/");
                files.insert(relative, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

fn web_dir(sample: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sample-extensions").join(sample).join("web")
}

/// The library of `sample` embeds exactly the files of its `web/` directory, byte for byte.
fn embeds_its_web_directory(sample: &str) {
    let info = check(&library(sample)).unwrap();
    assert!(info.web_renderer, "{sample} has a web renderer");
    let assets = web_assets_of(&library(sample)).unwrap().expect("web assets");
    let on_disk = files_of(&web_dir(sample));
    assert!(on_disk.contains_key("index.js"), "{sample}/web has its entry module");
    let paths: Vec<&str> = assets.paths().collect();
    assert_eq!(paths, on_disk.keys().map(String::as_str).collect::<Vec<_>>(), "sorted, `/`-separated");
    assert_eq!(assets.len(), on_disk.len());
    for (path, bytes) in &on_disk {
        assert_eq!(assets.get(path), Some(bytes.as_slice()), "{sample}: {path}");
    }
    assert_eq!(assets.get("/index.js"), None, "paths have no leading `/`");
    assert_eq!(assets.get("missing.js"), None);
}

#[test]
fn hello_embeds_its_web_renderer() {
    embeds_its_web_directory("hello");
}

#[test]
fn gluon_embeds_its_web_renderer() {
    embeds_its_web_directory("gluon");
}

#[test]
fn a_library_without_a_web_renderer_says_so() {
    let info = check(&library("probe")).unwrap();
    assert!(!info.web_renderer);
    assert!(web_assets_of(&library("probe")).unwrap().is_none());
}

#[tokio::test]
async fn the_host_reports_web_renderers_of_loaded_libraries() {
    let host = support::host_with(&["hello", "probe"]).await;
    assert!(host.library("hello").unwrap().web_renderer);
    assert!(!host.library("probe").unwrap().web_renderer);
}

#[test]
fn a_bad_web_asset_table_is_refused_with_the_path_and_the_problem() {
    let error = check(&library("web-bad-table")).unwrap_err();
    let LoadError::InvalidMetadata { problem, .. } = &error else { panic!("{error:?}") };
    assert_eq!(
        problem,
        &MetadataProblem::InvalidWebAssetPath { path: "../outside.txt".into(), problem: WebPathProblem::DotSegment }
    );
    let message = error.to_string();
    assert!(message.contains("`../outside.txt`") && message.contains("`.` or `..` segment"), "{message}");
    // A host refuses it too, and nothing of it is loaded.
    let host = Host::new(support::config());
    assert!(matches!(host.load(library("web-bad-table")), Err(LoadError::InvalidMetadata { .. })));
    assert!(host.library("web-bad-table").is_none());
}

#[test]
fn host_check_prints_whether_there_is_a_web_renderer() {
    let check = |name: &str| {
        let output =
            std::process::Command::new(support::host_binary()).arg("check").arg(library(name)).output().unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let hello = check("hello");
    assert!(hello.contains("web renderer:  yes"), "{hello}");
    let probe = check("probe");
    assert!(probe.contains("web renderer:  no"), "{probe}");
}
