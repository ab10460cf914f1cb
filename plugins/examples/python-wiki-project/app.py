"""Example Weir plugin in Python: derives `project` and `language` from `server_name`.

    en.wikipedia.org      -> project "wikipedia", language "en"
    commons.wikimedia.org -> project "commons",   language null
    www.wikidata.org      -> project "wikidata",  language null

Build (see build.sh): componentize-py -d ../../../wit -w weir:transform/plugin componentize -p ../../../sdk/python app
-o <out.wasm>. The helpers of sdk/python/weir_columns.py read the batch's columns event by event and gather the
answers back into columns.
"""

from typing import List

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import metrics
from wit_world.imports.types import Kind, Plan, PluginManifest, Row, StateNeeds

import weir_columns

# Wikis whose first label is not a language.
NOT_LANGUAGES = {"commons", "www", "meta", "species", "incubator", "wikidata", "test", "test2", "mediawiki"}


def split_server(server: str):
    parts = server.split(".")
    if len(parts) < 3:
        return None, None
    first, project = parts[0], parts[-2]
    if project == "wikimedia":  # commons.wikimedia.org, meta.wikimedia.org
        return first, None
    if first in NOT_LANGUAGES:  # www.wikidata.org, test.wikipedia.org
        return project, None
    return project, first


class Transform(exports.Transform):
    def manifest(self) -> PluginManifest:
        return PluginManifest("python-wiki-project", "0.1.0", Kind.ENRICH,
                              "Derives project and language from server_name")

    def init(self, config: str) -> Plan:
        if config.strip() not in ("", "{}"):
            raise Err("python-wiki-project takes no configuration")
        return Plan(reads=["server_name"], writes=["project", "language"], needs_payload=False,
                    needs_attributes=False, state=StateNeeds(keyed=False, snapshot=False), emits=[])

    def process(self, batch):
        events = weir_columns.Batch(batch)
        out = weir_columns.Output()
        for i in range(len(events)):
            server = events.get(0, i)
            project, language = split_server(server) if isinstance(server, str) else (None, None)
            out.set(0, project).set(1, language).keep()
        metrics.counter_add("enriched", len(events))
        return out.finish()

    def on_watermark(self, watermark_ms: int) -> List[Row]:
        return []

    def snapshot(self) -> bytes:
        return b""

    def restore(self, snapshot: bytes) -> None:
        return None
