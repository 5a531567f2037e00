//! The console's JSON notation for MessagePack values: plain JSON, plus three one-key objects
//! for what JSON cannot say. Values are shown the same way, so an answer can be typed back.
//!
//! - `{"$bin": [0, 1, 255]}`: binary data (each item a byte, 0 to 255);
//! - `{"$map": [[1, "one"], [2, "two"]]}`: a map whose keys are any values (integers,
//!   binary, arrays...), as `[key, value]` pairs in order;
//! - `{"$ext": [5, [1, 2]]}`: a MessagePack extension value (type, then its bytes).
//!
//! Any other object is a map with string keys. A map whose only key is one of these three
//! names is written with `$map` (`{"$map": [["$bin", 1]]}`), so nothing is ambiguous.

use rmpv::Value;
use serde_json::{Map, Number, Value as Json};

const BIN: &str = "$bin";
const MAP: &str = "$map";
const EXT: &str = "$ext";

/// Converts console JSON to the MessagePack value it stands for.
pub fn from_json(json: &Json) -> Result<Value, String> {
    Ok(match json {
        Json::Null => Value::Nil,
        Json::Bool(value) => Value::Boolean(*value),
        Json::Number(number) => {
            if let Some(value) = number.as_u64() {
                Value::from(value)
            } else if let Some(value) = number.as_i64() {
                Value::from(value)
            } else {
                Value::F64(number.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(text) => Value::from(text.as_str()),
        Json::Array(items) => Value::Array(items.iter().map(from_json).collect::<Result<_, _>>()?),
        Json::Object(object) => {
            match special(object) {
                Some((BIN, inner)) => Value::Binary(bytes(inner).ok_or_else(|| {
                    format!("`{BIN}` takes an array of bytes (integers from 0 to 255), not `{inner}`")
                })?),
                Some((MAP, inner)) => {
                    let pairs = inner.as_array().ok_or_else(|| not_pairs(inner))?;
                    let pairs = pairs.iter().map(|pair| match pair.as_array().map(Vec::as_slice) {
                        Some([key, value]) => Ok((from_json(key)?, from_json(value)?)),
                        _ => Err(not_pairs(pair)),
                    });
                    Value::Map(pairs.collect::<Result<_, _>>()?)
                }
                Some((_, inner)) => match inner.as_array().map(Vec::as_slice) {
                    Some([kind, data]) => {
                        let kind = kind.as_i64().and_then(|kind| i8::try_from(kind).ok());
                        match (kind, bytes(data)) {
                            (Some(kind), Some(data)) => Value::Ext(kind, data),
                            _ => return Err(not_ext(inner)),
                        }
                    }
                    _ => return Err(not_ext(inner)),
                },
                None => Value::Map(
                    object
                        .iter()
                        .map(|(key, value)| Ok((Value::from(key.as_str()), from_json(value)?)))
                        .collect::<Result<_, String>>()?,
                ),
            }
        }
    })
}

/// Shows a MessagePack value in console JSON.
pub fn to_json(value: &Value) -> Json {
    match value {
        Value::Nil => Json::Null,
        Value::Boolean(value) => Json::Bool(*value),
        Value::Integer(integer) => match (integer.as_u64(), integer.as_i64()) {
            (Some(value), _) => Json::from(value),
            (None, Some(value)) => Json::from(value),
            (None, None) => Json::Null,
        },
        // JSON has no NaN or infinity: those show as `null`.
        Value::F32(value) => Number::from_f64(f64::from(*value)).map_or(Json::Null, Json::Number),
        Value::F64(value) => Number::from_f64(*value).map_or(Json::Null, Json::Number),
        Value::String(text) => Json::String(String::from_utf8_lossy(text.as_bytes()).into_owned()),
        Value::Binary(data) => one(BIN, byte_array(data)),
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Map(pairs) => {
            let mut object = Map::new();
            for (key, value) in pairs {
                // Only string keys, each once, fit a JSON object.
                match key.as_str() {
                    Some(key) if !object.contains_key(key) => object.insert(key.to_owned(), to_json(value)),
                    _ => return map_pairs(pairs),
                };
            }
            if special(&object).is_some() {
                return map_pairs(pairs);
            }
            Json::Object(object)
        }
        Value::Ext(kind, data) => one(EXT, Json::Array(vec![Json::from(*kind), byte_array(data)])),
    }
}

/// The notation's name and content, if `object` is one of its one-key objects.
fn special(object: &Map<String, Json>) -> Option<(&'static str, &Json)> {
    let (key, inner) = object.iter().next().filter(|_| object.len() == 1)?;
    [BIN, MAP, EXT].into_iter().find(|name| name == key).map(|name| (name, inner))
}

fn bytes(json: &Json) -> Option<Vec<u8>> {
    json.as_array()?.iter().map(|item| item.as_u64().and_then(|byte| u8::try_from(byte).ok())).collect()
}

fn byte_array(data: &[u8]) -> Json {
    Json::Array(data.iter().map(|&byte| Json::from(byte)).collect())
}

fn one(key: &str, inner: Json) -> Json {
    Json::Object(Map::from_iter([(key.to_owned(), inner)]))
}

fn map_pairs(pairs: &[(Value, Value)]) -> Json {
    one(MAP, Json::Array(pairs.iter().map(|(key, value)| Json::Array(vec![to_json(key), to_json(value)])).collect()))
}

fn not_pairs(json: &Json) -> String {
    format!("`{MAP}` takes an array of [key, value] pairs, not `{json}`")
}

fn not_ext(json: &Json) -> String {
    format!("`{EXT}` takes [type, bytes] (a type from -128 to 127, then an array of bytes), not `{json}`")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &str) -> Json {
        let json: Json = serde_json::from_str(text).unwrap();
        let value = from_json(&json).unwrap();
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &value).unwrap();
        to_json(&rmpv::decode::read_value(&mut bytes.as_slice()).unwrap())
    }

    #[test]
    fn values_json_cannot_say_survive_a_round_trip() {
        for text in [
            r#"{"$bin":[0,1,255]}"#,
            r#"{"$map":[[1,"one"],[-2,"minus two"],[{"$bin":[7]},null]]}"#,
            r#"{"$map":[["$bin",[1]]]}"#,
            r#"{"$ext":[-5,[1,2]]}"#,
            r#"{"a":[1,-1,0.5,18446744073709551615,-9223372036854775808,"x",true,null],"$bin":1}"#,
        ] {
            assert_eq!(round_trip(text), serde_json::from_str::<Json>(text).unwrap(), "{text}");
        }
    }

    #[test]
    fn the_notation_is_exact_about_what_it_takes() {
        assert_eq!(from_json(&serde_json::json!({"$bin": [1, 2]})).unwrap(), Value::Binary(vec![1, 2]));
        let map = from_json(&serde_json::json!({"$map": [[1, "a"]]})).unwrap();
        assert_eq!(map, Value::Map(vec![(Value::from(1), Value::from("a"))]));
        let error = |json| from_json(&json).unwrap_err();
        assert!(error(serde_json::json!({"$bin": [256]})).contains("integers from 0 to 255"));
        assert!(error(serde_json::json!({"$bin": "AAE="})).contains("array of bytes"));
        assert!(error(serde_json::json!({"$map": [[1]]})).contains("[key, value] pairs, not `[1]`"));
        assert!(error(serde_json::json!({"$ext": [300, []]})).contains("[type, bytes]"));
        // A duplicate string key cannot be an object key twice.
        let twice = Value::Map(vec![(Value::from("k"), Value::from(1)), (Value::from("k"), Value::from(2))]);
        assert_eq!(to_json(&twice), serde_json::json!({"$map": [["k", 1], ["k", 2]]}));
    }
}
