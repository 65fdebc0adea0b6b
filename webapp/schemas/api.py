"""The JSON API's request, query and response models (pydantic v2). spectree validates every
route against them and generates /api/v1/openapi.json from them (api/spec.py).

One policy: request bodies and queries refuse unknown fields (extra="forbid"); ids in bodies are
strict integers (true is not 1); ids in queries are 1..2**63-1 and limit/offset are ranges.
Responses allow extra keys (a new field in a response is not a breaking change)."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt

MAX_ID = 2**63 - 1


def _blank_is_none(value: Any) -> Any:
    return None if value == "" else value


BodyId = Annotated[StrictInt, Field(ge=1, le=MAX_ID)]
QueryId = Annotated[int | None, BeforeValidator(_blank_is_none), Field(default=None, ge=1, le=MAX_ID)]
QueryBool = Annotated[bool | None, BeforeValidator(_blank_is_none), Field(default=None)]
Offset = Annotated[int, BeforeValidator(lambda v: 0 if v == "" else v), Field(default=0, ge=0, le=10**9)]
Text = Annotated[str, Field(max_length=10_000)]


def limit(default: int, hi: int = 500):
    return Annotated[int, BeforeValidator(lambda v: default if v == "" else v), Field(default=default, ge=1, le=hi)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Query(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Out(BaseModel):
    model_config = ConfigDict(extra="allow")


# ------------------------------------------------------------------ errors and meta

class ErrorBody(BaseModel):
    """Every error under /api/: `fields` maps a field path (steps[3].retry_policy.delay_seconds) to what is wrong."""
    error: str
    fields: dict[str, Any]
    request_id: str | None = Field(default=None, description="500 only: quote it when reporting the failure")


class Me(Out):
    username: str
    role: str
    display_name: str | None = None
    email: str | None = None


class OpenAPIDocument(Out):
    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]


# ------------------------------------------------------------------ pipelines

class PipelineBody(BaseModel):
    """A pipeline definition; the service validates it whole (graph, conditions, parameters, approvals)."""
    model_config = ConfigDict(extra="allow")
    name: Annotated[str, Field(max_length=200)]
    description: Text | None = None
    active: StrictBool | None = None
    groups: list[dict[str, Any]] | None = None
    steps: list[dict[str, Any]] | None = None


class ImportBody(Body):
    yaml: str | None = Field(default=None, description="the YAML text (or send it as the body itself)")


class PipelineListQuery(Query):
    search: str | None = Field(default=None, max_length=200, description="case-insensitive match on name or description")
    active: QueryBool


class GroupBrief(Out):
    id: str
    name: str
    sync_policy: str
    timeout_seconds: int | None = None


class Pipeline(Out):
    id: int
    name: str
    description: str | None = None
    active: bool
    version: int
    owner: str | None = None
    maintainers: list[str]
    steps: int
    created_at: str
    updated_at: str


class PipelineFull(Pipeline):
    definition: dict[str, Any]
    step_ids: dict[str, int]
    groups: list[GroupBrief]


class PipelineList(Out):
    results: list[Pipeline]


class AuditEntry(Out):
    id: int
    actor: str | None = None
    action: str
    version: int | None = None
    summary: str | None = None
    before: Any = None
    after: Any = None
    at: str


class AuditList(Out):
    results: list[AuditEntry]


class AdvancedConfigBody(Body):
    conditions: dict[str, Any] | None = None
    approval_required: StrictBool | None = None
    approval_users: list[str] | None = None
    approval_config: dict[str, Any] | None = None
    retry_policy: dict[str, Any] | None = None
    timeout_seconds: Any = None
    continue_on_failure: StrictBool | None = None
    parallel_group: str | None = None
    dependencies: list[BodyId] | None = Field(default=None, description="step ids; null: the stage rule")


class Step(Out):
    id: int
    pipeline: int
    name: str
    order: int
    step_type: str
    parameters: dict[str, Any]
    dependencies: Any = None
    parallel_group: str | None = None
    conditions: Any = None
    approval_required: bool
    approval_users: list[Any]
    approval_config: dict[str, Any]
    retry_policy: Any = None
    notification_config: Any = None
    timeout_seconds: int | None = None
    continue_on_failure: bool
    estimated_duration: float | None = None


class EvaluateConditionBody(Body):
    conditions: dict[str, Any] | None = Field(default=None, description="default: the step's saved conditions")
    context: dict[str, Any] | None = Field(default=None, description="laid over a sample where every step succeeded")


class ConditionResult(Out):
    result: bool | None = None
    error: str | None = None
    explanation: Any = None


class Analysis(Out):
    pipeline_id: int
    pipeline: str
    version: int


class MappingBody(Body):
    pipeline: BodyId | None = None
    tool_name: Annotated[str, Field(max_length=200)] | None = None
    tool_type: Annotated[str, Field(max_length=100)] | None = None
    tool_url: Annotated[str, Field(max_length=2000)] | None = None
    external_job_name: Annotated[str, Field(max_length=500)] | None = None
    active: StrictBool | None = None


class MappingListQuery(Query):
    pipeline: QueryId


class Mapping(Out):
    id: int
    pipeline: int | None = None
    pipeline_name: str | None = None
    tool_name: str | None = None
    tool_type: str | None = None
    tool_url: str | None = None
    external_job_name: str | None = None
    active: bool | None = None
    created_at: str | None = None


class MappingList(Out):
    results: list[Mapping]


# ------------------------------------------------------------------ parallel groups

class GroupUpdateBody(Body):
    pipeline: BodyId | None = Field(default=None, description="a group stays in its pipeline")
    name: Annotated[str, Field(max_length=200)] | None = None
    description: Text | None = None
    sync_policy: Literal["wait_all", "wait_any", "fail_fast"] | None = None
    timeout_seconds: Annotated[StrictInt, Field(ge=1, le=10**7)] | None = None
    steps: list[BodyId] | None = Field(default=None, description="member step ids (replaces the members)")


class GroupCreateBody(GroupUpdateBody):
    id: Annotated[str, Field(min_length=1, max_length=100)] | None = Field(default=None, description="local id")


class GroupListQuery(Query):
    pipeline: QueryId


class Group(Out):
    id: str
    pipeline: int
    name: str
    description: str
    sync_policy: str
    timeout_seconds: int | None = None
    steps: list[int]


class GroupList(Out):
    results: list[Group]


# ------------------------------------------------------------------ executions

Definition = Literal["original", "current"]


class StartExecutionBody(Body):
    pipeline: BodyId
    variables: dict[str, Any] | None = None
    trigger_data: dict[str, Any] | None = None
    secret_variables: list[str] | None = None


class ResumeBody(Body):
    from_step: str | None = None
    variables: dict[str, Any] | None = None
    definition: Definition | None = None
    use_current_definition: StrictBool | None = Field(default=None, description="older spelling of definition")


class RetryBody(Body):
    definition: Definition | None = None


class BypassBody(Body):
    reason: Annotated[str, Field(max_length=4000)] = ""


class ExecutionListQuery(Query):
    pipeline: QueryId
    status: str | None = None
    limit: limit(50)
    offset: Offset


class ExecutionStepsQuery(Query):
    logs: Annotated[bool, BeforeValidator(lambda v: True if v == "" else v)] = True


class HistoryQuery(Query):
    execution: str | None = None
    step: QueryId
    pipeline: QueryId
    status: str | None = None
    limit: limit(100)
    offset: Offset


class Execution(Out):
    id: int
    execution_id: str
    pipeline: int | None = None
    pipeline_name: str | None = None
    pipeline_version: int | None = None
    status: str
    status_reason: str | None = None
    bypassed_count: int
    trigger_type: str | None = None
    triggered_by: str | None = None
    failed_steps: list[Any]
    cancel_requested: bool | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None


class ExecutionList(Out):
    results: list[Execution]
    limit: int
    offset: int


class DefinitionUsed(Execution):
    definition: Definition
    definition_version: int | None = None


class RetryResult(DefinitionUsed):
    new_execution: bool


class RecoveryInfo(Out):
    execution_id: str
    status: str
    can_resume: bool
    failed_steps: list[str]
    succeeded_steps: list[str]
    recovery_point: Any = None
    children: list[str]


class Attempt(Out):
    id: int
    execution_id: str | None = None
    step_id: int | None = None
    step_name: str | None = None
    status: str
    retry_count: int | None = None
    exit_code: int | None = None


class AttemptList(Out):
    results: list[Attempt]


class StepAttempts(Out):
    step_id: int
    name: str
    step_type: str
    status: str
    attempts: list[Attempt]


class ExecutionSteps(Out):
    execution_id: str
    status: str
    steps: list[StepAttempts]


# ------------------------------------------------------------------ approvals

Comment = Annotated[str, Field(max_length=4000)]


class RespondBody(Body):
    action: Literal["approve", "reject"]
    comment: Comment | None = ""
    confirm_failures: StrictBool = Field(default=False, description="true to approve while a step of the run failed")


class ApproveBody(Body):
    approved: StrictBool
    comment: Comment | None = ""
    confirm_failures: StrictBool = False


class CreateApprovalBody(Body):
    execution_id: Annotated[str, Field(max_length=100)]
    step_id: BodyId
    approvers: list[Annotated[str, Field(max_length=200)]] | None = Field(default=None, description="usernames or role:NAME")
    required_approvals: Annotated[StrictInt, Field(ge=1, le=1000)] | None = None
    message: Comment | None = None
    timeout_hours: Annotated[float, Field(gt=0, le=24 * 365)] | None = None
    auto_approve_on_timeout: StrictBool | None = None
    reminder_hours: Annotated[float, Field(gt=0, le=24 * 365)] | None = None


class ApprovalListQuery(Query):
    status: str | None = None
    pipeline: str | None = Field(default=None, description="pipeline id or name")
    execution: str | None = None
    step: QueryId
    mine: Annotated[bool, BeforeValidator(lambda v: False if v == "" else v)] = False
    limit: limit(100)
    offset: Offset


class Approval(Out):
    id: int
    pipeline: dict[str, Any]
    step: dict[str, Any]
    execution_id: str | None = None
    requester: str | None = None
    approvers: list[str]


class ApprovalList(Out):
    count: int
    results: list[Approval]


class Decision(Approval):
    decision: dict[str, Any]
    settled: bool


# ------------------------------------------------------------------ notifications

class ChannelBody(Body):
    name: Annotated[str, Field(max_length=80)] | None = None
    channel_type: str | None = None
    active: StrictBool | None = None
    config: dict[str, Any] | None = Field(default=None, description="secrets left out (or empty) keep the stored value")


class Channel(Out):
    id: int
    name: str
    channel_type: str
    active: bool
    config: dict[str, Any]


class ChannelDetail(Channel):
    used_by: Any = None


class ChannelList(Out):
    results: list[Channel]


class DeliveryListQuery(Query):
    status: str | None = None
    channel: str | None = None
    execution: str | None = None
    event: str | None = None
    limit: limit(50)
    offset: Offset


class Delivery(Out):
    id: int
    status: str
    event: str | None = None
    channel: str | None = None
    attempts: int | None = None


class DeliveryList(Out):
    count: int
    results: list[Delivery]


class TestNotificationBody(Body):
    channel: str | None = None
    webhook_url: Annotated[str, Field(max_length=2000)] | None = None
    channel_type: str | None = None
    secret: str | None = None
    recipients: list[str] | None = None
    message: Annotated[str, Field(max_length=10_000)] | None = None


class TestNotificationResult(Out):
    success: bool
    status: str
    delivery_id: int
    channel: str | None = None
    target: str | None = None
    error: str | None = None
    message: dict[str, Any]


class StepNotificationsBody(BaseModel):
    """The step's notification_config (or {notification_config: ...}); the service refuses unknown keys."""
    model_config = ConfigDict(extra="allow")
    enabled: StrictBool | None = None
    events: list[str] | None = None
    channels: list[str] | None = None
    recipients: list[str] | None = None


class StepNotifications(Out):
    pipeline_id: int
    step_id: int
    step: str
    notification_config: dict[str, Any] | None = None
    pipeline_version: int


# ------------------------------------------------------------------ metrics

class MetricsQuery(Query):
    days: int | None = Field(default=None, ge=1, description="window: executions created in the last N days")
    limit: int | None = Field(default=None, ge=1, description="window: at most the N most recent of those executions")


class Metrics(Out):
    executions: Any = None
    retries: Any = None
    most_failing_steps: list[Any] | None = None
    flaky_steps: list[Any] | None = None
    slowest_steps: list[Any] | None = None
