"""A corpus of JSON Schemas shaped like real use, assembled here (nothing is downloaded).

Three families, as users bring them:

* pydantic v2 models, as ``model_json_schema()`` writes them: ``dict[str, X]``,
  ``datetime``, ``date``, ``UUID``, ``Literal``, ``Enum``, ``Optional``,
  discriminated unions, tuples, nested lists, constrained fields, recursion;
* OpenAI function-calling signatures (``parameters`` of a ``tools`` entry,
  strict ones included: ``additionalProperties: false``, every property required);
* configuration schemas in the style of the JSON Schema Store and of
  Kubernetes' OpenAPI (``$schema``, ``$id``/``id``, ``definitions``,
  ``x-kubernetes-*``, ``default``, ``examples``, ``patternProperties``, ...).
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Schema = dict[str, Any]

# -- pydantic models --------------------------------------------------------------------------------


class Colour(str, enum.Enum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


class Priority(enum.IntEnum):
    LOW = 1
    MEDIUM = 2
    HIGH = 3


class Point(BaseModel):
    x: float
    y: float


class Address(BaseModel):
    street: str
    city: str
    postcode: str | None = None
    country: Literal["FR", "DE", "GB", "US"] = "FR"


class Person(BaseModel):
    name: str
    age: int = Field(ge=0, le=130)
    email: str | None = None
    address: Address | None = None


class WordCounts(BaseModel):
    counts: dict[str, int]


class Scores(BaseModel):
    by_player: dict[str, float]
    best: str | None = None


class Meeting(BaseModel):
    title: str
    starts: dt.datetime
    day: dt.date
    id: uuid.UUID


class Ticket(BaseModel):
    id: uuid.UUID
    priority: Priority
    colour: Colour
    tags: list[str] = []


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = Field(ge=0, le=9)


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Pet(BaseModel):
    pet: Cat | Dog = Field(discriminator="kind")
    owner: str


class Segment(BaseModel):
    span: tuple[int, int]
    label: str


class Matrix(BaseModel):
    rows: list[list[int]] = Field(max_length=4)


class Tree(BaseModel):
    value: int
    children: list[Tree] = Field(default_factory=list, max_length=3)


class Sentiment(BaseModel):
    label: Literal["positive", "negative", "neutral"]
    confidence: float = Field(ge=0.0, le=1.0)


class Invoice(BaseModel):
    number: Annotated[str, Field(pattern=r"^INV-[0-9]{4}$")]
    lines: list[tuple[str, int, float]] = Field(min_length=1, max_length=3)
    paid: bool = False


class StrictUser(BaseModel):
    model_config = ConfigDict(extra="forbid")
    login: str = Field(min_length=3, max_length=16)
    admin: bool


class Recipe(BaseModel):
    name: str
    servings: int = Field(gt=0, lt=20)
    ingredients: list[str]
    steps: list[str] | None = None


class Weather(BaseModel):
    city: str
    temperature_c: float
    conditions: list[Literal["sun", "rain", "cloud", "snow", "wind"]] = Field(max_length=3)


class Event(BaseModel):
    at: dt.time
    what: str
    optional_note: str | None = None


class Inventory(BaseModel):
    items: dict[str, Annotated[int, Field(ge=0)]]
    warehouse: str


class Shape(BaseModel):
    shape: Literal["circle", "square"]
    size: Annotated[float, Field(gt=0)]
    centre: Point


class Extraction(BaseModel):
    people: list[Person] = Field(max_length=2)
    places: list[str] = Field(max_length=3)


class Classification(BaseModel):
    category: Colour | None
    reasons: list[str] = Field(max_length=2)


class Log(BaseModel):
    level: Literal["debug", "info", "warning", "error"]
    message: str
    context: dict[str, str | int | bool] = {}


class Order(BaseModel):
    order_id: int
    customer: Person
    items: list[Annotated[str, Field(max_length=20)]]
    total: float
    placed: dt.datetime | None = None


PYDANTIC_MODELS: list[type[BaseModel]] = [
    Point, Address, Person, WordCounts, Scores, Meeting, Ticket, Pet, Segment, Matrix, Tree, Sentiment,
    Invoice, StrictUser, Recipe, Weather, Event, Inventory, Shape, Extraction, Classification, Log, Order,
]  # fmt: skip


# -- OpenAI function-calling signatures ------------------------------------------------------------


def _tool(properties: Schema, required: list[str] | None = None, *, strict: bool = False) -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    if strict:  # OpenAI's strict mode: every property required, nothing else
        schema["required"] = list(properties)
        schema["additionalProperties"] = False
    elif required:
        schema["required"] = required
    return schema


FUNCTION_SIGNATURES: dict[str, Schema] = {
    "get_weather": _tool(
        {
            "location": {"type": "string", "description": "City and country, e.g. Paris, France"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        ["location"],
    ),
    "get_weather_strict": _tool(
        {"location": {"type": "string"}, "unit": {"type": ["string", "null"], "enum": ["celsius", "fahrenheit", None]}},
        strict=True,
    ),
    "search_web": _tool(
        {
            "query": {"type": "string", "description": "What to search for"},
            "max_results": {"type": "integer", "minimum": 1, "maximum": 10, "default": 5},
            "site": {"type": "string", "format": "hostname"},
        },
        ["query"],
    ),
    "send_email": _tool(
        {
            "to": {"type": "array", "items": {"type": "string", "format": "email"}, "minItems": 1, "maxItems": 3},
            "subject": {"type": "string"},
            "body": {"type": "string"},
            "cc": {"type": "array", "items": {"type": "string", "format": "email"}},
        },
        ["to", "subject", "body"],
    ),
    "create_event": _tool(
        {
            "title": {"type": "string"},
            "start": {"type": "string", "format": "date-time"},
            "end": {"type": "string", "format": "date-time"},
            "attendees": {"type": "array", "items": {"type": "string"}},
        },
        strict=True,
    ),
    "book_flight": _tool(
        {
            "origin": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "destination": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "date": {"type": "string", "format": "date"},
            "passengers": {"type": "integer", "minimum": 1, "maximum": 9},
            "class": {"type": "string", "enum": ["economy", "premium", "business", "first"]},
        },
        ["origin", "destination", "date"],
    ),
    "run_sql": _tool(
        {"query": {"type": "string"}, "database": {"type": "string", "enum": ["sales", "hr", "ops"]}}, strict=True
    ),
    "calculate": _tool(
        {
            "operation": {"type": "string", "enum": ["add", "subtract", "multiply", "divide"]},
            "a": {"type": "number"},
            "b": {"type": "number"},
        },
        strict=True,
    ),
    "set_thermostat": _tool(
        {
            "temperature": {"type": "number", "minimum": 10, "maximum": 30, "multipleOf": 0.5},
            "room": {"type": "string"},
        },
        ["temperature"],
    ),
    "lookup_order": _tool(
        {"order_id": {"type": "string", "format": "uuid"}, "include_items": {"type": "boolean"}}, ["order_id"]
    ),
    "translate": _tool(
        {
            "text": {"type": "string"},
            "source_language": {"type": "string", "pattern": "^[a-z]{2}$"},
            "target_language": {"type": "string", "pattern": "^[a-z]{2}$"},
        },
        ["text", "target_language"],
    ),
    "add_todo": _tool(
        {
            "task": {"type": "string", "maxLength": 80},
            "due": {"anyOf": [{"type": "string", "format": "date"}, {"type": "null"}]},
            "priority": {"type": "integer", "enum": [1, 2, 3]},
        },
        strict=True,
    ),
    "update_crm": _tool(
        {
            "contact": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "phone": {"type": "string"}},
                "required": ["name"],
                "additionalProperties": False,
            },
            "fields": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        ["contact"],
    ),
    "plot_chart": _tool(
        {
            "kind": {"type": "string", "enum": ["bar", "line", "pie"]},
            "series": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"label": {"type": "string"}, "value": {"type": "number"}},
                    "required": ["label", "value"],
                },
                "maxItems": 4,
            },
        },
        ["kind", "series"],
    ),
    "resize_image": _tool(
        {
            "url": {"type": "string", "format": "uri"},
            "width": {"type": "integer", "exclusiveMinimum": 0, "maximum": 4096},
            "height": {"type": "integer", "exclusiveMinimum": 0, "maximum": 4096},
            "keep_aspect": {"type": "boolean", "default": True},
        },
        ["url", "width"],
    ),
    "geocode": _tool(
        {
            "address": {"type": "string"},
            "bounds": {
                "type": "array",
                "prefixItems": [{"type": "number"}, {"type": "number"}, {"type": "number"}, {"type": "number"}],
                "minItems": 4,
                "maxItems": 4,
            },
        },
        ["address"],
    ),
    "no_arguments": {"type": "object", "properties": {}, "additionalProperties": False},
    "shell": _tool(
        {"command": {"type": "array", "items": {"type": "string"}, "minItems": 1}, "timeout_s": {"type": "integer"}},
        ["command"],
    ),
}


# -- configuration schemas, schema-store and Kubernetes style --------------------------------------

DRAFT7 = "http://json-schema.org/draft-07/schema#"
DRAFT2020 = "https://json-schema.org/draft/2020-12/schema"

CONFIG_SCHEMAS: dict[str, Schema] = {
    "package_json_subset": {
        "$schema": DRAFT7,
        "$id": "https://json.schemastore.org/package.json",
        "title": "JSON schema for NPM package.json files",
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 214, "minLength": 1, "pattern": "^[a-z0-9-]+$"},
            "version": {"type": "string", "description": "Version must be parseable by node-semver"},
            "private": {"type": "boolean", "default": False},
            "scripts": {"type": "object", "additionalProperties": {"type": "string"}},
            "dependencies": {"$ref": "#/definitions/dependency"},
            "license": {"type": "string", "examples": ["MIT", "ISC"]},
        },
        "required": ["name", "version"],
        "definitions": {
            "dependency": {
                "description": "Dependencies are specified with a simple hash of package name to version range.",
                "type": "object",
                "additionalProperties": {"type": "string"},
            }
        },
    },
    "tsconfig_subset": {
        "$schema": DRAFT7,
        "id": "https://json.schemastore.org/tsconfig",
        "type": "object",
        "properties": {
            "compilerOptions": {
                "type": "object",
                "properties": {
                    "target": {"enum": ["es5", "es2015", "es2020", "esnext"], "default": "es5"},
                    "strict": {"type": "boolean", "markdownDescription": "Enable all strict type-checking options."},
                    "outDir": {"type": "string"},
                    "lib": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
                },
            },
            "include": {"type": "array", "items": {"type": "string"}},
            "exclude": {"type": "array", "items": {"type": "string"}},
        },
    },
    "eslintrc_subset": {
        "$schema": DRAFT7,
        "type": "object",
        "properties": {
            "root": {"type": "boolean"},
            "env": {"type": "object", "additionalProperties": {"type": "boolean"}},
            "extends": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
            "rules": {
                "type": "object",
                "additionalProperties": {
                    "anyOf": [{"enum": ["off", "warn", "error"]}, {"type": "integer", "minimum": 0, "maximum": 2}]
                },
            },
        },
        "additionalProperties": False,
    },
    "github_workflow_subset": {
        "$schema": DRAFT7,
        "$id": "https://json.schemastore.org/github-workflow.json",
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "on": {
                "anyOf": [
                    {"enum": ["push", "pull_request", "workflow_dispatch"]},
                    {"type": "array", "items": {"enum": ["push", "pull_request"]}},
                ]
            },
            "jobs": {
                "type": "object",
                "patternProperties": {"^[_a-zA-Z][a-zA-Z0-9_-]*$": {"$ref": "#/definitions/job"}},
                "additionalProperties": False,
            },
        },
        "required": ["on", "jobs"],
        "definitions": {
            "job": {
                "type": "object",
                "properties": {
                    "runs-on": {"type": "string"},
                    "steps": {"type": "array", "items": {"$ref": "#/definitions/step"}, "maxItems": 3},
                },
                "required": ["runs-on"],
            },
            "step": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "run": {"type": "string"}, "uses": {"type": "string"}},
            },
        },
    },
    "docker_compose_subset": {
        "$schema": DRAFT7,
        "type": "object",
        "properties": {
            "version": {"type": "string"},
            "services": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "string"},
                        "ports": {"type": "array", "items": {"type": ["string", "number"]}},
                        "environment": {
                            "type": "object",
                            "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
                        },
                        "restart": {"enum": ["no", "always", "on-failure", "unless-stopped"]},
                    },
                },
            },
        },
        "required": ["services"],
    },
    "kubernetes_deployment_subset": {
        "description": "Deployment enables declarative updates for Pods and ReplicaSets.",
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string", "enum": ["apps/v1"]},
            "kind": {"type": "string", "enum": ["Deployment"]},
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                },
                "required": ["name"],
            },
            "spec": {
                "type": "object",
                "properties": {
                    "replicas": {"type": "integer", "format": "int32", "minimum": 0, "maximum": 100},
                    "selector": {"type": "object", "x-kubernetes-map-type": "atomic"},
                },
                "required": ["selector"],
            },
        },
        "required": ["apiVersion", "kind", "metadata"],
        "x-kubernetes-group-version-kind": [{"group": "apps", "kind": "Deployment", "version": "v1"}],
    },
    "kubernetes_container_port": {
        "description": "ContainerPort represents a network port in a single container.",
        "type": "object",
        "properties": {
            "containerPort": {"type": "integer", "format": "int32", "minimum": 1, "maximum": 65535},
            "name": {"type": "string"},
            "protocol": {"type": "string", "enum": ["TCP", "UDP", "SCTP"], "default": "TCP"},
        },
        "required": ["containerPort"],
        "x-kubernetes-list-map-keys": ["containerPort", "protocol"],
    },
    "prettierrc": {
        "$schema": DRAFT7,
        "title": "Schema for .prettierrc",
        "type": "object",
        "properties": {
            "printWidth": {"type": "integer", "default": 80, "minimum": 20, "maximum": 200},
            "tabWidth": {"type": "integer", "default": 2, "minimum": 1, "maximum": 8},
            "semi": {"type": "boolean", "default": True},
            "singleQuote": {"type": "boolean", "default": False},
            "trailingComma": {"enum": ["all", "es5", "none"], "default": "all"},
        },
        "additionalProperties": False,
    },
    "renovate_subset": {
        "$schema": DRAFT2020,
        "type": "object",
        "properties": {
            "extends": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
            "schedule": {"type": "array", "items": {"type": "string"}},
            "automerge": {"type": "boolean", "deprecated": False},
            "labels": {"type": "array", "items": {"type": "string", "minLength": 1}},
        },
    },
    "openapi_info_subset": {
        "$schema": DRAFT2020,
        "$defs": {
            "contact": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "url": {"type": "string", "format": "uri"},
                    "email": {"type": "string", "format": "email"},
                },
            }
        },
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "version": {"type": "string"},
            "contact": {"$ref": "#/$defs/contact"},
        },
        "required": ["title", "version"],
        "$comment": "a subset of OpenAPI 3.1's info object",
    },
    "geojson_point": {
        "$schema": DRAFT7,
        "title": "GeoJSON Point",
        "type": "object",
        "required": ["type", "coordinates"],
        "properties": {
            "type": {"type": "string", "enum": ["Point"]},
            "coordinates": {"type": "array", "minItems": 2, "maxItems": 3, "items": {"type": "number"}},
            "bbox": {"type": "array", "minItems": 4, "maxItems": 4, "items": {"type": "number"}},
        },
    },
    "composer_json_subset": {
        "$schema": DRAFT7,
        "type": "object",
        "properties": {
            "name": {"type": "string", "pattern": "^[a-z0-9]([_.-]?[a-z0-9]+)*/[a-z0-9](([_.]|-{1,2})?[a-z0-9]+)*$"},
            "type": {"type": "string", "default": "library"},
            "require": {"type": "object", "additionalProperties": {"type": "string"}},
            "minimum-stability": {"enum": ["dev", "alpha", "beta", "RC", "stable"]},
        },
        "required": ["name"],
    },
    "babelrc_subset": {
        "$schema": DRAFT7,
        "type": "object",
        "properties": {
            "presets": {
                "type": "array",
                "items": {
                    "anyOf": [
                        {"type": "string"},
                        {"type": "array", "prefixItems": [{"type": "string"}, {"type": "object"}]},
                    ]
                },
            },
            "sourceMaps": {"anyOf": [{"type": "boolean"}, {"enum": ["inline", "both"]}]},
        },
    },
    "lerna_json": {
        "$schema": DRAFT7,
        "type": "object",
        "properties": {
            "version": {
                "anyOf": [{"type": "string", "pattern": "^[0-9]+\\.[0-9]+\\.[0-9]+$"}, {"const": "independent"}]
            },
            "npmClient": {"enum": ["npm", "yarn", "pnpm"]},
            "packages": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        },
        "required": ["version"],
    },
    "jest_config_subset": {
        "$schema": DRAFT7,
        "type": "object",
        "properties": {
            "testEnvironment": {"type": "string"},
            "verbose": {"type": "boolean"},
            "coverageThreshold": {
                "type": "object",
                "properties": {
                    "global": {
                        "type": "object",
                        "properties": {
                            "lines": {"type": "number", "minimum": 0, "maximum": 100},
                            "branches": {"type": "number", "minimum": 0, "maximum": 100},
                        },
                    }
                },
            },
            "moduleNameMapper": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    "vscode_launch_subset": {
        "$schema": DRAFT7,
        "type": "object",
        "properties": {
            "version": {"const": "0.2.0"},
            "configurations": {
                "type": "array",
                "maxItems": 2,
                "items": {
                    "type": "object",
                    "properties": {
                        "type": {"type": "string"},
                        "request": {"enum": ["launch", "attach"]},
                        "name": {"type": "string"},
                        "program": {"type": "string"},
                    },
                    "required": ["type", "request", "name"],
                },
            },
        },
        "required": ["version", "configurations"],
    },
    "dependabot_subset": {
        "$schema": DRAFT7,
        "type": "object",
        "properties": {
            "version": {"const": 2},
            "updates": {
                "type": "array",
                "maxItems": 2,
                "items": {
                    "type": "object",
                    "properties": {
                        "package-ecosystem": {"enum": ["npm", "pip", "docker", "github-actions"]},
                        "directory": {"type": "string"},
                        "schedule": {
                            "type": "object",
                            "properties": {"interval": {"enum": ["daily", "weekly", "monthly"]}},
                            "required": ["interval"],
                        },
                    },
                    "required": ["package-ecosystem", "directory", "schedule"],
                },
            },
        },
        "required": ["version", "updates"],
    },
    "feature_flags": {
        "$schema": DRAFT2020,
        "$id": "urn:example:feature-flags",
        "type": "object",
        "additionalProperties": {
            "type": "object",
            "properties": {
                "enabled": {"type": "boolean"},
                "rollout": {"type": "integer", "minimum": 0, "maximum": 100},
                "owners": {"type": "array", "items": {"type": "string", "format": "email"}, "maxItems": 2},
            },
            "required": ["enabled"],
        },
    },
    "cron_job": {
        "$schema": DRAFT2020,
        "type": "object",
        "properties": {
            "schedule": {"type": "string", "pattern": "^[0-9*/,-]+ [0-9*/,-]+ [0-9*/,-]+ [0-9*/,-]+ [0-9*/,-]+$"},
            "command": {"type": "string"},
            "timezone": {"type": "string", "default": "UTC"},
            "retries": {"type": "integer", "minimum": 0, "maximum": 5},
            "last_run": {"type": ["string", "null"], "format": "date-time"},
        },
        "required": ["schedule", "command"],
        "readOnly": False,
    },
    "nullable_and_any": {
        "$schema": DRAFT2020,
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "payload": {},
            "meta": {"type": ["object", "null"]},
            "note": {"type": ["string", "null"], "maxLength": 30},
        },
        "required": ["id", "payload"],
    },
    "duration_and_times": {
        "$schema": DRAFT2020,
        "type": "object",
        "properties": {
            "timeout": {"type": "string", "format": "duration"},
            "opens": {"type": "string", "format": "time"},
            "server": {"type": "string", "format": "ipv4"},
        },
        "required": ["timeout"],
    },
}


def corpus() -> dict[str, Schema]:
    """Every schema of the corpus by name, in a stable order."""
    schemas = {f"pydantic:{model.__name__}": model.model_json_schema() for model in PYDANTIC_MODELS}
    schemas.update({f"function:{name}": schema for name, schema in FUNCTION_SIGNATURES.items()})
    schemas.update({f"config:{name}": schema for name, schema in CONFIG_SCHEMAS.items()})
    return schemas
