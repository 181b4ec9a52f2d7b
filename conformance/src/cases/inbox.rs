use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};

use crate::{enc, error_fields, ids, problem, Ctx, Endpoint};

/// GET /inbox{query} as `key`, asserting 200.
async fn page(cx: &Ctx, key: &str, query: &str) -> Value {
    let resp = cx.get(&format!("/inbox{query}"), key).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{query}");
    resp.json().await.unwrap()
}

pub async fn the_inbox_lists_undelivered_events_oldest_first(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("t");
    let only = format!("?event_type={}", enc(&t));
    let empty = page(cx, key, &only).await;
    assert_eq!(
        empty,
        json!({"events": [], "pagination": {"next_cursor": null, "has_more": false}})
    );
    let created = cx.create_n(key, 5, &t).await;
    cx.delete(&format!("/events/{}", created[1]), key)
        .send()
        .await
        .unwrap();
    let p = page(cx, key, &only).await;
    let expected: Vec<String> = created
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, id)| id.clone())
        .collect();
    assert_eq!(ids(&p["events"]), expected);
    let first = &p["events"][0];
    assert_eq!(first["payload"], json!({"i": 0}));
    assert_eq!(first["delivered"], false);
    assert_eq!(first["delivered_at"], Value::Null);
}

pub async fn limit_out_of_range_or_not_a_number_is_400(cx: &Ctx) {
    let key = &cx.creator;
    for q in [
        "limit=0",
        "limit=201",
        "limit=abc",
        "limit=-5",
        "limit=1e2",
        "limit=",
    ] {
        let resp = cx.get(&format!("/inbox?{q}"), key).send().await.unwrap();
        let p = problem(resp, 400, "VALIDATION_ERROR").await;
        assert_eq!(error_fields(&p), ["limit"], "{q}");
    }
    for q in ["limit=1", "limit=200"] {
        assert_eq!(
            cx.get(&format!("/inbox?{q}"), key)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
}

pub async fn unknown_query_parameters_are_400(cx: &Ctx) {
    let resp = cx.get("/inbox?limt=5", &cx.creator).send().await.unwrap();
    let p = problem(resp, 400, "VALIDATION_ERROR").await;
    assert_eq!(error_fields(&p), ["limt"]);
}

pub async fn a_malformed_tampered_or_foreign_cursor_is_400_invalid_cursor(cx: &Ctx) {
    let (key, other) = (&cx.creator, &cx.other_account);
    let t = cx.ty("c");
    for i in 0..3 {
        let body = json!({"event_type": t, "payload": {"i": i}});
        cx.create_event(key, &body).await;
        cx.create_event(other, &body).await;
    }
    let p = page(cx, key, &format!("?limit=1&event_type={}", enc(&t))).await;
    let cursor = p["pagination"]["next_cursor"].as_str().unwrap().to_owned();
    let mut tampered: Vec<char> = cursor.chars().collect();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();
    for bad in ["!!!", "AAAA", "x", tampered.as_str(), &"A".repeat(600)] {
        let resp = cx
            .client
            .get(cx.url("/inbox"))
            .bearer_auth(key)
            .query(&[("cursor", bad)])
            .send()
            .await
            .unwrap();
        problem(resp, 400, "INVALID_CURSOR").await;
    }
    let resp = cx
        .client
        .get(cx.url("/inbox"))
        .bearer_auth(other)
        .query(&[("cursor", &cursor)])
        .send()
        .await
        .unwrap();
    problem(resp, 400, "INVALID_CURSOR").await;
    // Another key of the same account may continue the walk.
    let resp = cx
        .client
        .get(cx.url("/inbox"))
        .bearer_auth(&cx.viewer)
        .query(&[("cursor", cursor.as_str()), ("event_type", t.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let rest: Value = resp.json().await.unwrap();
    assert_eq!(rest["events"].as_array().unwrap().len(), 2, "{rest}");
}

pub async fn the_event_type_filter_is_exact(cx: &Ctx) {
    let key = &cx.creator;
    let (exact, longer, other_case) = (
        cx.ty("order.created"),
        cx.ty("order.created.v2"),
        cx.ty("Order.Created"),
    );
    let mut want = Vec::new();
    for i in 0..7 {
        let t = match i % 3 {
            0 => &exact,
            1 => &longer,
            _ => &other_case,
        };
        let id = cx
            .create_event(key, &json!({"event_type": t, "payload": {"i": i}}))
            .await;
        if *t == exact {
            want.push(id);
        }
    }
    assert_eq!(cx.walk_inbox(key, 1, Some(&exact)).await, want);
    assert_eq!(
        cx.walk_inbox(key, 200, Some(&cx.ty("order"))).await,
        Vec::<String>::new()
    );
}

pub async fn has_more_is_false_only_on_the_last_page(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("h");
    cx.create_n(key, 4, &t).await;
    let only = format!("&event_type={}", enc(&t));
    let p1 = page(cx, key, &format!("?limit=2{only}")).await;
    assert_eq!(p1["pagination"]["has_more"], true);
    let c = p1["pagination"]["next_cursor"].as_str().unwrap();
    let p2 = page(cx, key, &format!("?limit=2&cursor={}{only}", enc(c))).await;
    assert_eq!(ids(&p2["events"]).len(), 2);
    assert_eq!(
        p2["pagination"],
        json!({"next_cursor": null, "has_more": false})
    );
    let all = page(cx, key, &format!("?limit=4{only}")).await;
    assert_eq!(all["pagination"]["has_more"], false);
    let p = page(cx, key, &format!("?limit=3{only}")).await;
    assert_eq!(p["pagination"]["has_more"], true);
}

pub async fn walking_pages_while_events_are_added_and_acknowledged_never_repeats_one(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("w");
    let only = format!("&event_type={}", enc(&t));
    let mut order: HashMap<String, usize> = HashMap::new();
    let mut initial = Vec::new();
    for i in 0..30 {
        let id = cx
            .create_event(key, &json!({"event_type": t, "payload": {"i": i}}))
            .await;
        order.insert(id.clone(), i);
        initial.push(id);
    }
    let mut acked: HashSet<String> = HashSet::new();
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut n = 30;
    let mut round = 0;
    loop {
        let q = match &cursor {
            Some(c) => format!("?limit=7&cursor={}{only}", enc(c)),
            None => format!("?limit=7{only}"),
        };
        let p = page(cx, key, &q).await;
        seen.extend(ids(&p["events"]));
        // Between pages: two new events, one ack ahead of the walk, one behind.
        for _ in 0..2 {
            let id = cx
                .create_event(key, &json!({"event_type": t, "payload": {"i": n}}))
                .await;
            order.insert(id, n);
            n += 1;
        }
        let ahead = &initial[(round * 7 + 10).min(29)];
        if acked.insert(ahead.clone()) {
            assert_eq!(cx.ack(key, ahead).await, 204);
        }
        if let Some(behind) = seen.first().cloned() {
            if acked.insert(behind.clone()) {
                cx.delete(&format!("/events/{behind}"), key)
                    .send()
                    .await
                    .unwrap();
            }
        }
        round += 1;
        if p["pagination"]["has_more"] == false {
            break;
        }
        cursor = Some(p["pagination"]["next_cursor"].as_str().unwrap().to_owned());
        assert!(round < 100, "the walk must end");
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "an event appeared twice");
    let positions: Vec<usize> = seen.iter().map(|id| order[id]).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "out of order: {positions:?}"
    );
    for id in &initial {
        if !acked.contains(id) {
            assert!(
                unique.contains(id),
                "{id} was undelivered throughout and never appeared"
            );
        }
    }
}

pub async fn the_inbox_is_read_your_writes(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("ryw");
    let only = format!("?limit=200&event_type={}", enc(&t));
    for i in 0..10 {
        let id = cx
            .create_event(key, &json!({"event_type": t, "payload": {"i": i}}))
            .await;
        let p = page(cx, key, &only).await;
        assert!(
            ids(&p["events"]).contains(&id),
            "visible as soon as POST answered"
        );
        assert_eq!(cx.ack(key, &id).await, 204);
        let p = page(cx, key, &only).await;
        assert!(
            !ids(&p["events"]).contains(&id),
            "gone as soon as DELETE answered"
        );
    }
}

pub async fn an_account_sees_only_its_own_inbox(cx: &Ctx) {
    let (a, z) = (&cx.creator, &cx.other_account);
    let t = cx.ty("t");
    let ia = cx
        .create_event(a, &json!({"event_type": t, "payload": {}}))
        .await;
    let iz = cx
        .create_event(z, &json!({"event_type": t, "payload": {"z": 1}}))
        .await;
    assert_eq!(cx.walk_inbox(a, 50, Some(&t)).await, vec![ia]);
    assert_eq!(cx.walk_inbox(z, 50, Some(&t)).await, vec![iz]);
}

pub async fn clients_of_the_original_service_work_unchanged(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("t");
    let only = format!("&event_type={}", enc(&t));
    let created = cx.create_n(key, 3, &t).await;
    // GET /events/inbox is /inbox, with limit and cursor.
    let first = page(cx, key, &format!("?limit=50{only}")).await;
    let p1 = {
        let resp = cx
            .get(&format!("/events/inbox?limit=2{only}"), key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json::<Value>().await.unwrap()
    };
    assert_eq!(ids(&p1["events"]), created[..2]);
    let cursor = p1["pagination"]["next_cursor"].as_str().unwrap();
    let resp = cx
        .get(
            &format!("/events/inbox?limit=2&cursor={}{only}", enc(cursor)),
            key,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        ids(&resp.json::<Value>().await.unwrap()["events"]),
        created[2..]
    );
    assert_eq!(ids(&first["events"]), created);
    // ?timestamp= on event routes is accepted (and ignored).
    let ts = "timestamp=2024-01-01T00:00:00Z";
    let resp = cx
        .get(&format!("/events/{}?{ts}", created[0]), key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = cx
        .delete(&format!("/events/{}?{ts}", created[0]), key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
}
