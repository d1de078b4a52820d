"""The part of Grafana's dashboard JSON model that deploy/grafana/terminus-dashboard.json uses, as JSON Schema.

Grafana publishes no JSON Schema for dashboards that can be had offline (its model is CUE, in the
Grafana source). Fields and types follow Grafana's "JSON model" reference for schemaVersion 39
(grafana.com/docs/grafana/latest/dashboards/build-dashboards/view-dashboard-json-model);
``additionalProperties: false`` on the objects we write makes a misspelt key fail instead of
being dropped on import.
"""

from __future__ import annotations

from typing import Any

_DATASOURCE = {
    "type": "object",
    "required": ["type", "uid"],
    "properties": {"type": {"const": "prometheus"}, "uid": {"type": "string", "minLength": 1}},
    "additionalProperties": False,
}
_GRID_POS = {
    "type": "object",
    "required": ["h", "w", "x", "y"],
    "properties": {
        "h": {"type": "integer", "minimum": 1},
        "w": {"type": "integer", "minimum": 1, "maximum": 24},
        "x": {"type": "integer", "minimum": 0, "maximum": 23},
        "y": {"type": "integer", "minimum": 0},
    },
    "additionalProperties": False,
}
_TARGET = {
    "type": "object",
    "required": ["refId", "expr", "datasource"],
    "properties": {
        "refId": {"type": "string", "pattern": "^[A-Z]$"},
        "expr": {"type": "string", "minLength": 1},
        "legendFormat": {"type": "string"},
        "datasource": _DATASOURCE,
    },
    "additionalProperties": False,
}
_THRESHOLDS = {
    "type": "object",
    "required": ["mode", "steps"],
    "properties": {
        "mode": {"enum": ["absolute", "percentage"]},
        "steps": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["color", "value"],
                "properties": {"color": {"type": "string"}, "value": {"type": ["number", "null"]}},
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}
_PANEL = {
    "type": "object",
    "required": ["id", "type", "title", "gridPos"],
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "type": {"enum": ["row", "timeseries", "stat", "gauge", "table", "bargauge", "text"]},
        "title": {"type": "string", "minLength": 1},
        "description": {"type": "string"},
        "collapsed": {"type": "boolean"},
        "datasource": _DATASOURCE,
        "gridPos": _GRID_POS,
        "targets": {"type": "array", "items": _TARGET},
        "panels": {"type": "array"},
        "options": {"type": "object"},
        "fieldConfig": {
            "type": "object",
            "required": ["defaults", "overrides"],
            "properties": {
                "defaults": {
                    "type": "object",
                    "properties": {"unit": {"type": "string"}, "thresholds": _THRESHOLDS},
                    "additionalProperties": False,
                },
                "overrides": {"type": "array"},
            },
            "additionalProperties": False,
        },
    },
    "additionalProperties": False,
    # A panel that shows data says where from, and what to ask; a row holds panels only.
    "if": {"properties": {"type": {"const": "row"}}},
    "then": {"required": ["panels"], "not": {"required": ["targets"]}},
    "else": {"required": ["datasource", "targets", "fieldConfig"], "properties": {"targets": {"minItems": 1}}},
}
_VARIABLE = {
    "type": "object",
    "required": ["name", "type"],
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        "label": {"type": "string"},
        "type": {"enum": ["datasource", "query", "custom", "constant", "interval"]},
        "query": {"type": "string"},
        "current": {"type": "object"},
        "hide": {"enum": [0, 1, 2]},
        "refresh": {"enum": [0, 1, 2]},
        "options": {"type": "array"},
        "regex": {"type": "string"},
    },
    "additionalProperties": False,
}

DASHBOARD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["uid", "title", "schemaVersion", "panels", "templating", "time"],
    "properties": {
        "uid": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,40}$"},
        "title": {"type": "string", "minLength": 1},
        "description": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "timezone": {"enum": ["browser", "utc", ""]},
        "editable": {"type": "boolean"},
        "graphTooltip": {"enum": [0, 1, 2]},
        "refresh": {"type": "string", "pattern": "^([0-9]+[smhd])?$"},
        "schemaVersion": {"type": "integer", "minimum": 36},
        "version": {"type": "integer", "minimum": 0},
        "time": {
            "type": "object",
            "required": ["from", "to"],
            "properties": {"from": {"type": "string"}, "to": {"type": "string"}},
            "additionalProperties": False,
        },
        "templating": {
            "type": "object",
            "required": ["list"],
            "properties": {"list": {"type": "array", "items": _VARIABLE}},
            "additionalProperties": False,
        },
        "annotations": {"type": "object", "properties": {"list": {"type": "array"}}},
        "links": {"type": "array"},
        "panels": {"type": "array", "minItems": 1, "items": _PANEL},
    },
    "additionalProperties": False,
}
