//! When target `_id`s sort in MongoDB exactly as the source key scan orders rows, both sides can be
//! compared merge-style, streaming, in bounded memory. This holds for the key's own value as `_id`
//! with a single integer, text (`COLLATE "C"` = MongoDB's binary string order) or uuid key (binary
//! subtype 4 compares by bytes; the canonical string sorts like the bytes).

use std::cmp::Ordering;

use bson::Bson;

use crate::mapping::plan::Plan;
use crate::mapping::spec::IdStrategy;
use crate::source::ColKind;

pub fn ids_follow_key_order(plan: &Plan) -> bool {
    plan.id.strategy == IdStrategy::Key
        && plan.key.len() == 1
        && matches!(
            plan.read.columns[plan.key[0]].kind,
            ColKind::Int16 | ColKind::Int32 | ColKind::Int64 | ColKind::Text | ColKind::Uuid
        )
}

/// MongoDB's cross-type order (the types an `_id` written by cutover, or a stray one, can have).
fn rank(b: &Bson) -> u8 {
    match b {
        Bson::MinKey => 0,
        Bson::Null | Bson::Undefined => 1,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 2,
        Bson::String(_) | Bson::Symbol(_) => 3,
        Bson::Document(_) => 4,
        Bson::Array(_) => 5,
        Bson::Binary(_) => 6,
        Bson::ObjectId(_) => 7,
        Bson::Boolean(_) => 8,
        Bson::DateTime(_) => 9,
        Bson::Timestamp(_) => 10,
        Bson::RegularExpression(_) => 11,
        Bson::MaxKey => 13,
        _ => 12,
    }
}

/// Compares two `_id` values the way MongoDB sorts them (for the types above).
pub fn bson_cmp(a: &Bson, b: &Bson) -> Ordering {
    let (ra, rb) = (rank(a), rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    match (a, b) {
        (Bson::Int32(x), Bson::Int32(y)) => x.cmp(y),
        (Bson::Int64(x), Bson::Int64(y)) => x.cmp(y),
        (Bson::Int32(x), Bson::Int64(y)) => i64::from(*x).cmp(y),
        (Bson::Int64(x), Bson::Int32(y)) => x.cmp(&i64::from(*y)),
        (x, y) if ra == 2 => num(x).total_cmp(&num(y)),
        (Bson::String(x), Bson::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Bson::Binary(x), Bson::Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then(u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then(x.bytes.cmp(&y.bytes)),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.cmp(y),
        (x, y) => x.to_string().cmp(&y.to_string()),
    }
}

fn num(b: &Bson) -> f64 {
    match b {
        Bson::Int32(i) => f64::from(*i),
        Bson::Int64(i) => *i as f64,
        Bson::Double(d) => *d,
        _ => f64::NAN,
    }
}

/// An `_id` as its encoded BSON bytes: a hashable, exact identity (shared with `--sync-deletes`).
pub fn id_bytes(id: &Bson) -> Vec<u8> {
    let mut buf = Vec::with_capacity(24);
    let _ = crate::transform::encode::element(&mut buf, "", id);
    buf
}

/// The `_id` whose [`id_bytes`] these are (`None` if they are not an encoded element).
pub fn id_from_bytes(bytes: &[u8]) -> Option<Bson> {
    let mut doc = Vec::with_capacity(bytes.len() + 5);
    doc.extend_from_slice(&((bytes.len() + 5) as i32).to_le_bytes());
    doc.extend_from_slice(bytes);
    doc.push(0);
    let raw = bson::RawDocument::from_bytes(&doc).ok()?;
    let value = raw.get("").ok().flatten()?;
    Bson::try_from(value.to_raw_bson()).ok()
}

#[cfg(test)]
mod tests {
    use bson::spec::BinarySubtype;

    use super::*;

    #[test]
    fn id_bytes_round_trip() {
        for id in [
            Bson::Int64(7),
            Bson::String("a-b".into()),
            Bson::Document(bson::doc! { "a": 1, "b": "x" }),
            Bson::Binary(bson::Binary {
                subtype: BinarySubtype::Uuid,
                bytes: vec![3; 16],
            }),
        ] {
            assert_eq!(id_from_bytes(&id_bytes(&id)), Some(id));
        }
    }

    #[test]
    fn mongodb_order_of_ids() {
        assert_eq!(bson_cmp(&Bson::Int32(2), &Bson::Int64(10)), Ordering::Less);
        assert_eq!(
            bson_cmp(&Bson::Int64(10), &Bson::String("1".into())),
            Ordering::Less
        );
        assert_eq!(
            bson_cmp(&Bson::String("Z".into()), &Bson::String("a".into())),
            Ordering::Less
        );
        let uuid = |b: u8| {
            Bson::Binary(bson::Binary {
                subtype: BinarySubtype::Uuid,
                bytes: vec![b; 16],
            })
        };
        assert_eq!(bson_cmp(&uuid(1), &uuid(2)), Ordering::Less);
        assert_eq!(
            bson_cmp(&Bson::String("x".into()), &uuid(0)),
            Ordering::Less
        );
    }
}
