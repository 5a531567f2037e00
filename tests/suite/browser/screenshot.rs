//! A screenshot of the shell with the sample extensions' web renderers (`hello`, `gluon`)
//! running, saved to `target/web-shell.png` for a person to look at.

use std::path::PathBuf;

use super::web::WebHost;

#[tokio::test]
async fn the_shell_with_the_samples_is_screenshotted_to_target_web_shell_png() {
    let web = WebHost::start(&["hello", "gluon"]).await;
    let tab = web.browser.open(&web.url()).await;
    tab.set_viewport(1280, 800).await;
    for sample in ["hello", "gluon"] {
        let frame = tab.frame(&format!("http://{sample}-")).await;
        // Running (the bootstrap's status line says so), and drawn.
        frame
            .wait_for(
                "document.querySelector('#extension-host-status')?.dataset.state === 'running' \
                 && document.querySelector('main')?.innerText.trim().length > 0",
            )
            .await;
    }
    let png = tab.screenshot().await;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), (1280, 800));
    assert!(png.len() > 20_000, "a {}-byte PNG of 1280x800 is a blank page", png.len());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("web-shell.png"), &png).unwrap();
    web.stop().await;
}
