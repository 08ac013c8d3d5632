"""The operator UI for background work: periodic job runs and bulk tasks, read-only.

A job's row shows its last run (start, duration, outcome, message), how often it
runs now (from the runtime settings) and whether a worker is running it. "Run
now" starts selected jobs in the background, under the same cluster-wide lock.
"""

from __future__ import annotations

from datetime import timedelta
from functools import partial

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html
from django.utils.text import Truncator

from pools import background, bulk
from pools.jobs import load_jobs, run_job
from pools.models import BulkTask, JobRun
from pools.settings import get_runtime


def _seconds(value: float) -> str:
    if value >= 3600 and value % 3600 == 0:
        return f"{value / 3600:g} h"
    if value >= 60 and value % 60 == 0:
        return f"{value / 60:g} min"
    return f"{value:g} s"


class ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(JobRun)
class JobRunAdmin(ReadOnly):
    list_display = [
        "name", "state", "every", "last_started_at", "last_finished_at", "duration", "runs", "message_short",
    ]
    readonly_fields = ["name", "state", "every", "last_started_at", "last_finished_at", "duration", "runs", "message"]
    fields = list(readonly_fields)
    actions = ["run_now"]

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_run_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("pools.change_jobrun")

    @admin.display(description="Outcome", ordering="outcome")
    def state(self, obj: JobRun) -> str:
        if obj.last_started_at and (obj.last_finished_at is None or obj.last_finished_at < obj.last_started_at):
            return format_html("<strong>running</strong> <small>since {}</small>", timezone.localtime(
                obj.last_started_at).strftime("%H:%M:%S"))
        if obj.outcome == "failed":
            return format_html('<strong style="color: var(--error-fg)">{}</strong>', "failed")
        return obj.outcome or "never ran"

    @admin.display(description="Every")
    def every(self, obj: JobRun) -> str:
        job = load_jobs().get(obj.name)
        if job is None:
            return "not registered"
        interval = job.interval(get_runtime())
        return _seconds(interval) if interval > 0 else "off"

    @admin.display(description="Duration", ordering="duration_ms")
    def duration(self, obj: JobRun) -> str:
        if obj.duration_ms is None:
            return ""
        return f"{obj.duration_ms} ms" if obj.duration_ms < 1000 else f"{obj.duration_ms / 1000:.1f} s"

    @admin.display(description="Message", ordering="message")
    def message_short(self, obj: JobRun) -> str:
        return format_html('<span title="{}">{}</span>', obj.message, Truncator(obj.message).chars(100))

    @admin.action(description="Run selected jobs now (in the background)", permissions=["run"])
    def run_now(self, request: HttpRequest, queryset: QuerySet[JobRun]) -> None:
        known = load_jobs()
        names = [name for name in queryset.values_list("name", flat=True) if name in known]
        for name in names:
            background.spawn(partial(run_job, name), name=f"job-{name}")
        self.message_user(
            request,
            f"Started {', '.join(names) or 'nothing'}; reload this page to see the outcome"
            + (" (a job another worker is running is skipped)." if names else "."),
            messages.INFO if names else messages.WARNING,
        )


@admin.register(BulkTask)
class BulkTaskAdmin(ReadOnly):
    list_display = ["task", "kind_shown", "progress", "status", "created_by", "created_at", "finished_at", "message"]
    list_filter = ["status", "kind"]
    readonly_fields = ["task", "kind_shown", "progress", "status", "message", "created_by", "created_at",
                       "finished_at", "elapsed"]
    fields = list(readonly_fields)
    list_per_page = 50
    show_full_result_count = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[BulkTask]:
        return super().get_queryset(request).defer("account_ids")  # thousands of ids: not for the page

    def has_delete_permission(self, request: HttpRequest, obj: BulkTask | None = None) -> bool:
        running = obj is not None and obj.status in ("queued", "running")
        return not running and super().has_delete_permission(request, obj)

    @admin.display(description="Task", ordering="id")
    def task(self, obj: BulkTask) -> str:
        return f"#{obj.pk}"

    @admin.display(description="Action", ordering="kind")
    def kind_shown(self, obj: BulkTask) -> str:
        return bulk.KINDS.get(obj.kind, obj.kind)

    @admin.display(description="Progress")
    def progress(self, obj: BulkTask) -> str:
        failed = ""
        if obj.failed:
            failed = format_html(', <span style="color: var(--error-fg)">{} failed</span>', obj.failed)
        return format_html(
            '<progress value="{}" max="{}" style="width: 10em"></progress> {} / {} done{}',
            obj.done, max(obj.total, 1), obj.done, obj.total, failed,
        )

    @admin.display(description="Took")
    def elapsed(self, obj: BulkTask) -> str:
        end = obj.finished_at or timezone.now()
        seconds = max(0, round((end - obj.created_at) / timedelta(seconds=1)))
        return f"{seconds} s" + ("" if obj.finished_at else " so far")
