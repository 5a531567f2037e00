//! The console's value notation: binary data and maps with non-string keys, which plain JSON
//! cannot express, go in and come out of the real binary as `{"$bin": [...]}` and
//! `{"$map": [[key, value], ...]}`.

use crate::console::Console;

/// A `probe_protocol::Awkward` in the console's notation: binary, integer map keys, 64-bit
/// extremes, enums, options, an empty list and map.
const AWKWARD: &str = concat!(
    r#"{"max_u64":18446744073709551615,"min_i64":-9223372036854775808,"#,
    r#""binary":{"$bin":[0,1,127,255]},"int_keys":{"$map":[[-1,"minus one"],[7,"seven"]]},"#,
    r#""nested":["Unit",{"Circle":{"radius":1.5}},{"Pair":[-3,"Unit"]}],"text":"tab\there","#,
    r#""empty_list":[],"empty_map":{},"none":null,"some_zero":0,"falsy":[false,0,""],"float":0.25}"#
);

#[tokio::test]
async fn binary_values_and_integer_map_keys_go_in_and_come_out() {
    let mut console = Console::start(&["probe"]).await;

    // The probe's `echo` decodes the request as typed fields (`serde_bytes` binary, a
    // `BTreeMap<i32, String>`) and answers it re-encoded: the reply is the request, exactly.
    let reply = console
        .ask(&format!("invoke probe echo {AWKWARD}"), |l| l.starts_with("reply") || l.starts_with("error"))
        .await;
    let reply = reply.strip_prefix("reply: ").unwrap_or_else(|| panic!("{reply}"));
    let sent: serde_json::Value = serde_json::from_str(AWKWARD).unwrap();
    assert_eq!(serde_json::from_str::<serde_json::Value>(reply).unwrap(), sent, "{reply}");
    assert!(reply.contains(r#""binary":{"$bin":[0,1,127,255]}"#), "{reply}");
    assert!(reply.contains(r#""int_keys":{"$map":[[-1,"minus one"],[7,"seven"]]}"#), "{reply}");

    // Broadcasts are shown the same way; a map whose one string key is `$bin` stays a map.
    console.ask("watch on", |l| l == "ok").await;
    for value in [r#"{"$bin":[1,2,3]}"#, r#"{"$map":[[1,"one"],[{"$bin":[9]},[true]]]}"#, r#"{"$map":[["$bin",1]]}"#] {
        let event = console.ask(&format!("broadcast probe blob {value}"), |l| l.starts_with("event probe blob")).await;
        assert_eq!(event, format!("event probe blob from host: {value}"));
    }
    console.ask("watch off", |l| l == "ok").await;

    // What the notation does not take is refused with the reason, and nothing is sent.
    let error = console.ask(r#"invoke probe echo {"$bin":[1,256]}"#, |l| l.starts_with("error")).await;
    assert_eq!(
        error,
        "error: the value is not valid: `$bin` takes an array of bytes (integers from 0 to 255), not `[1,256]`"
    );
    let error = console.ask(r#"broadcast probe blob {"$map":[[1,"one"],[2]]}"#, |l| l.starts_with("error")).await;
    assert_eq!(error, "error: the value is not valid: `$map` takes an array of [key, value] pairs, not `[2]`");

    console.ask("quit", |l| l == "console closed").await;
}
