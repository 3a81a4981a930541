//! Objects read item by item, whatever the API server stored.
//!
//! The API server admits custom resources whose free-form fields (a patch's `value`, a Cluster
//! topology variable) nest up to 10,000 levels, while serde_json refuses more than 128. Decoded
//! as a list, one such object failed the whole list, so every object of its kind went
//! unreconciled (kube-client's list type buffers the whole page, and with it the depth limit).
//! A [`RawObject`] keeps its metadata decoded and every other top-level field as its raw JSON
//! text, read without recursion; only [`RawObject::decode`] applies the depth limit, to that one
//! object. [`watch`] lists and watches such objects, so one object that cannot be decoded is
//! reported on itself and never fails a list or a watch.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use futures::{Stream, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, ObjectMeta, WatchEvent, WatchParams};
use kube::core::{DynamicResourceScope, ListMeta, Request};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::de::{self, DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// An object with its metadata decoded and its other fields (`spec`, `status`, …) as raw JSON.
#[derive(Clone, Debug)]
pub struct RawObject {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    fields: Vec<(String, Box<RawValue>)>,
}

impl RawObject {
    /// The object as `K`; the depth limit and `K`'s schema apply here, to this object alone.
    pub fn decode<K: DeserializeOwned>(&self) -> Result<K, serde_json::Error> {
        serde_json::from_str(&self.to_json()?)
    }

    /// A top-level field other than `apiVersion`, `kind` and `metadata`, as its JSON text.
    pub fn field(&self, name: &str) -> Option<&RawValue> {
        self.fields
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| &**value)
    }

    /// The object as a dynamic object (its fields as JSON values, depth-limited).
    pub fn dynamic(&self) -> Result<DynamicObject, serde_json::Error> {
        self.decode()
    }

    /// The object's metadata alone, as a dynamic object without content.
    pub fn metadata_only(&self) -> DynamicObject {
        DynamicObject {
            types: Some(kube::api::TypeMeta {
                api_version: self.api_version.clone(),
                kind: self.kind.clone(),
            }),
            metadata: self.metadata.clone(),
            data: serde_json::Value::Object(Default::default()),
        }
    }

    fn to_json(&self) -> Result<String, serde_json::Error> {
        let api_version = serde_json::value::to_raw_value(&self.api_version)?;
        let kind = serde_json::value::to_raw_value(&self.kind)?;
        let metadata = serde_json::value::to_raw_value(&self.metadata)?;
        let mut object: BTreeMap<&str, &RawValue> = self
            .fields
            .iter()
            .map(|(key, value)| (key.as_str(), &**value))
            .collect();
        object.insert("apiVersion", &api_version);
        object.insert("kind", &kind);
        object.insert("metadata", &metadata);
        serde_json::to_string(&object)
    }
}

impl<'de> Deserialize<'de> for RawObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RawObjectVisitor)
    }
}

struct RawObjectVisitor;

impl<'de> Visitor<'de> for RawObjectVisitor {
    type Value = RawObject;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Kubernetes object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawObject, A::Error> {
        let mut object = RawObject {
            api_version: String::new(),
            kind: String::new(),
            metadata: ObjectMeta::default(),
            fields: Vec::new(),
        };
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "apiVersion" => object.api_version = map.next_value()?,
                "kind" => object.kind = map.next_value()?,
                "metadata" => {
                    let raw: Box<RawValue> = map.next_value()?;
                    object.metadata = metadata(&raw).map_err(de::Error::custom)?;
                }
                _ => object.fields.push((key, map.next_value()?)),
            }
        }
        Ok(object)
    }
}

/// An object's metadata without its managed fields: their `fieldsV1` mirror the object's
/// structure, so they nest as deep as its deepest field. No controller reads them.
fn metadata(raw: &RawValue) -> Result<ObjectMeta, serde_json::Error> {
    let mut fields: BTreeMap<String, Box<RawValue>> = serde_json::from_str(raw.get())?;
    fields.remove("managedFields");
    serde_json::from_str(&serde_json::to_string(&fields)?)
}

impl Resource for RawObject {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }

    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }

    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }

    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A list page, read item by item (no flattened fields, which would buffer the whole page).
#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default)]
    items: Option<Vec<RawObject>>,
}

/// Where a [`watch`] is.
enum State {
    /// Listing, from the `continue` token of the next page, if any.
    Listing(Option<String>),
    /// Listed up to this resource version; a watch starts from it.
    Listed(String),
    Watching(
        String,
        futures::stream::BoxStream<'static, kube::Result<WatchEvent<RawObject>>>,
    ),
}

/// Lists, then watches, the objects of `api` as kube-runtime's watcher does (the same
/// [`watcher::Event`]s; a list again when the watch's resource version has expired), but with
/// each object read on its own, so that no object fails the list or the watch.
pub fn watch(
    api: Api<RawObject>,
    config: watcher::Config,
) -> impl Stream<Item = watcher::Result<watcher::Event<RawObject>>> + Send {
    futures::stream::unfold(State::Listing(None), move |state| {
        let api = api.clone();
        let config = config.clone();
        async move {
            let (events, next) = step(&api, &config, state).await;
            Some((futures::stream::iter(events), next))
        }
    })
    .flatten()
}

type Events = Vec<watcher::Result<watcher::Event<RawObject>>>;

/// One step of a watch: the events it yields and where it goes next.
async fn step(api: &Api<RawObject>, config: &watcher::Config, state: State) -> (Events, State) {
    match state {
        State::Listing(token) => {
            let mut events = Vec::new();
            if token.is_none() {
                events.push(Ok(watcher::Event::Init));
            }
            match list_page(api, config, token).await {
                Ok(page) => {
                    let items = page.items.unwrap_or_default();
                    events.extend(items.into_iter().map(|o| Ok(watcher::Event::InitApply(o))));
                    match (page.metadata.continue_, page.metadata.resource_version) {
                        (Some(next), _) if !next.is_empty() => (events, State::Listing(Some(next))),
                        (_, Some(version)) => {
                            events.push(Ok(watcher::Event::InitDone));
                            (events, State::Listed(version))
                        }
                        (_, None) => {
                            events.push(Err(watcher::Error::NoResourceVersion));
                            (events, State::Listing(None))
                        }
                    }
                }
                Err(e) => {
                    // A failed page starts the list over (its `continue` token may have expired).
                    events.push(Err(watcher::Error::InitialListFailed(e)));
                    (events, State::Listing(None))
                }
            }
        }
        State::Listed(version) => match api.watch(&watch_params(config), &version).await {
            Ok(stream) => (Vec::new(), State::Watching(version, stream.boxed())),
            // The version has expired: list again.
            Err(kube::Error::Api(status)) if status.code == 410 => (
                vec![Err(watcher::Error::WatchStartFailed(kube::Error::Api(
                    status,
                )))],
                State::Listing(None),
            ),
            Err(e) => (
                vec![Err(watcher::Error::WatchStartFailed(e))],
                State::Listed(version),
            ),
        },
        State::Watching(version, mut stream) => match stream.next().await {
            None => (Vec::new(), State::Listed(version)),
            Some(Ok(event)) => watched(event, version, stream),
            Some(Err(e)) => (
                vec![Err(watcher::Error::WatchFailed(e))],
                State::Listed(version),
            ),
        },
    }
}

/// What one watch event yields, and the watch's next state.
fn watched(
    event: WatchEvent<RawObject>,
    version: String,
    stream: futures::stream::BoxStream<'static, kube::Result<WatchEvent<RawObject>>>,
) -> (Events, State) {
    let at = |o: &RawObject| o.resource_version().unwrap_or_else(|| version.clone());
    match event {
        WatchEvent::Added(o) | WatchEvent::Modified(o) => {
            let next = at(&o);
            (
                vec![Ok(watcher::Event::Apply(o))],
                State::Watching(next, stream),
            )
        }
        WatchEvent::Deleted(o) => {
            let next = at(&o);
            (
                vec![Ok(watcher::Event::Delete(o))],
                State::Watching(next, stream),
            )
        }
        WatchEvent::Bookmark(b) => (
            Vec::new(),
            State::Watching(b.metadata.resource_version, stream),
        ),
        // 410 Gone: the version has expired, so list again; other errors watch again.
        WatchEvent::Error(status) if status.code == 410 => (
            vec![Err(watcher::Error::WatchError(status))],
            State::Listing(None),
        ),
        WatchEvent::Error(status) => (
            vec![Err(watcher::Error::WatchError(status))],
            State::Listed(version),
        ),
    }
}

fn watch_params(config: &watcher::Config) -> WatchParams {
    WatchParams {
        label_selector: config.label_selector.clone(),
        field_selector: config.field_selector.clone(),
        timeout: config.timeout,
        bookmarks: config.bookmarks,
        send_initial_events: false,
    }
}

/// One page of the list, its items read one by one.
async fn list_page(
    api: &Api<RawObject>,
    config: &watcher::Config,
    token: Option<String>,
) -> kube::Result<Page> {
    let params = ListParams {
        label_selector: config.label_selector.clone(),
        field_selector: config.field_selector.clone(),
        limit: config.page_size,
        continue_token: token,
        ..ListParams::default()
    };
    let request = Request::new(api.resource_url())
        .list(&params)
        .map_err(kube::Error::BuildRequest)?;
    let text = api.clone().into_client().request_text(request).await?;
    // Never the text in an error: it holds every object of the page.
    serde_json::from_str(&text).map_err(kube::Error::SerdeError)
}

/// `event` with its object turned into another form by `f`.
pub fn map_event<A, B>(event: watcher::Event<A>, f: impl Fn(A) -> B) -> watcher::Event<B> {
    match event {
        watcher::Event::Apply(o) => watcher::Event::Apply(f(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(f(o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(o) => watcher::Event::InitApply(f(o)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TalosConfig whose patch value nests `depth` lists, with managed fields as deep, as
    /// the API server stores it.
    fn deep(name: &str, depth: usize) -> String {
        let value = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let fields = format!("{}{{}}{}", "{\"f:x\":".repeat(depth), "}".repeat(depth));
        format!(
            r#"{{"apiVersion":"bootstrap.cluster.x-k8s.io/v1alpha3","kind":"TalosConfig",
            "metadata":{{"name":"{name}","namespace":"t","resourceVersion":"7",
              "managedFields":[{{"manager":"kubectl","operation":"Apply","fieldsType":"FieldsV1","fieldsV1":{fields}}}]}},
            "spec":{{"generateType":"worker","configPatches":[{{"op":"add","path":"/x","value":{value}}}]}}}}"#
        )
    }

    #[test]
    fn a_page_with_an_object_nested_past_the_decoder_limit_is_read_item_by_item() {
        let page = format!(
            r#"{{"apiVersion":"v1","kind":"TalosConfigList","metadata":{{"resourceVersion":"9","continue":"next"}},
            "items":[{},{},{}]}}"#,
            deep("shallow", 3),
            deep("deep", 9_000),
            deep("shallower", 1)
        );
        let page: Page = serde_json::from_str(&page).expect("the page is read");
        assert_eq!(page.metadata.resource_version.as_deref(), Some("9"));
        assert_eq!(page.metadata.continue_.as_deref(), Some("next"));
        let items = page.items.unwrap_or_default();
        let names: Vec<String> = items.iter().map(ResourceExt::name_any).collect();
        assert_eq!(names, ["shallow", "deep", "shallower"]);
        assert!(items.iter().all(|o| o.metadata.managed_fields.is_none()));
        assert_eq!(items[1].namespace().as_deref(), Some("t"));

        let shallow = items[0].dynamic().expect("a shallow object decodes");
        assert_eq!(
            shallow.data["spec"]["configPatches"][0]["value"],
            serde_json::json!([[[1]]])
        );
        assert_eq!(
            shallow.types.map(|t| t.kind).as_deref(),
            Some("TalosConfig")
        );
        let error = items[1].dynamic().expect_err("the deep one does not");
        assert!(error.to_string().contains("recursion limit"), "{error}");
        assert!(items[2].dynamic().is_ok());
    }

    #[test]
    fn only_metadata_is_kept_of_an_object_read_for_its_metadata() {
        let object: RawObject = serde_json::from_str(&deep("d", 500)).expect("read");
        let meta = object.metadata_only();
        assert_eq!(meta.metadata.name.as_deref(), Some("d"));
        assert_eq!(meta.data, serde_json::json!({}));
    }

    fn after(event: WatchEvent<RawObject>) -> (usize, String) {
        let (events, next) = watched(event, "5".into(), futures::stream::empty().boxed());
        let next = match next {
            State::Listing(None) => "list".to_owned(),
            State::Listing(Some(_)) => "next page".to_owned(),
            State::Listed(v) => format!("watch from {v}"),
            State::Watching(v, _) => format!("watching at {v}"),
        };
        (events.len(), next)
    }

    fn status(code: u16) -> Box<kube::core::Status> {
        Box::new(kube::core::Status {
            code,
            ..kube::core::Status::default()
        })
    }

    #[test]
    fn an_expired_watch_lists_again_other_errors_watch_again_from_where_they_were() {
        let object: RawObject = serde_json::from_str(&deep("o", 1)).expect("read");
        assert_eq!(
            after(WatchEvent::Modified(object.clone())),
            (1, "watching at 7".into()),
            "follows the object's resource version"
        );
        assert_eq!(
            after(WatchEvent::Deleted(object)),
            (1, "watching at 7".into())
        );
        assert_eq!(after(WatchEvent::Error(status(410))), (1, "list".into()));
        assert_eq!(
            after(WatchEvent::Error(status(500))),
            (1, "watch from 5".into())
        );
    }
}
