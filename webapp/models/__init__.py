"""SQLAlchemy 2 typed models (DESIGN §2). snapshots.py is the only ORM -> engine adapter."""
from .approval import ApprovalDecision, ApprovalRequest
from .audit import PipelineAuditEntry
from .base import utcnow
from .execution import StepExecutionHistory, WorkflowExecution
from .notification import NotificationChannel, NotificationDelivery
from .pipeline import ParallelGroup, Pipeline, PipelineStep, PipelineToolMapping, step_dependencies
from .user import ROLES, User

__all__ = [
    "ApprovalDecision", "ApprovalRequest", "NotificationChannel", "NotificationDelivery",
    "ParallelGroup", "Pipeline", "PipelineAuditEntry", "PipelineStep", "PipelineToolMapping", "ROLES",
    "StepExecutionHistory", "User", "WorkflowExecution", "step_dependencies", "utcnow",
]
