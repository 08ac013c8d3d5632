"""Tokens in and out of the admin: the import page and the export file.

Import goes through `pools.importing.import_tokens`, the parser behind
`manage.py import_tokens`, so both accept the same files and print the same
summary. Pasted text is never rendered back into the page. Export writes JSON
Lines (`{"token", "tier", "note"}`) that the same importer reads back, under a
comment line saying the file holds secrets.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from pools.importing import TokenFileError, import_tokens
from pools.models import Account, Tier

if TYPE_CHECKING:
    from django.contrib.admin import ModelAdmin

logger = logging.getLogger(__name__)

MAX_FILE_BYTES = 20 * 1024 * 1024
FORMATS_HELP = (
    "One token per line (bare, sso=…, or a whole Cookie header), JSON Lines with "
    "{\"token\", \"tier\", \"note\", \"priority\", \"max_concurrent\", \"proxy\"}, or a JSON list of either. "
    "Blank lines and # comments are skipped."
)


class SecretTextarea(forms.Textarea):
    """A paste box that never puts its value back into the page (the form may be shown again with errors)."""

    def format_value(self, value: object) -> None:
        return None


class ImportForm(forms.Form):
    file = forms.FileField(required=False, label="Token file", help_text=FORMATS_HELP)
    text = forms.CharField(
        required=False,
        label="Or paste tokens",
        strip=False,
        widget=SecretTextarea(attrs={"rows": 10, "cols": 90, "autocomplete": "off", "spellcheck": "false"}),
        help_text="Same formats as the file. What you paste is not shown again on this page.",
    )
    tier = forms.ChoiceField(
        choices=Tier.choices, initial=Tier.BASIC, help_text="For entries that do not name their tier."
    )
    dry_run = forms.BooleanField(required=False, label="Dry run (parse and count, write nothing)", label_suffix="")

    def clean(self) -> dict:
        super().clean()
        data = self.cleaned_data
        upload, text = data.get("file"), data.get("text") or ""
        if upload and text.strip():
            raise forms.ValidationError("Upload a file or paste tokens, not both.")
        if upload:
            if upload.size > MAX_FILE_BYTES:
                raise forms.ValidationError(f"The file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MB.")
            try:
                data["content"] = upload.read().decode("utf-8-sig")
            except UnicodeDecodeError:
                raise forms.ValidationError("The file is not UTF-8 text.") from None
        elif text.strip():
            data["content"] = text
        else:
            raise forms.ValidationError("Choose a token file or paste tokens.")
        return data


def import_view(model_admin: ModelAdmin, request: HttpRequest) -> HttpResponse:
    """`/admin/pools/account/import/`: needs the permission to add accounts."""
    if not model_admin.has_add_permission(request):
        raise PermissionDenied
    changelist = reverse("admin:pools_account_changelist")
    form = ImportForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        try:
            result = import_tokens(
                form.cleaned_data["content"], default_tier=form.cleaned_data["tier"],
                dry_run=form.cleaned_data["dry_run"],
            )
        except TokenFileError as exc:
            form.add_error(None, f"Nothing imported: {exc}.")
        except IntegrityError:
            form.add_error(None, "Another import added some of these tokens meanwhile; nothing imported. Try again.")
        else:
            summary = result.summary()
            level = messages.WARNING if result.invalid else messages.SUCCESS
            model_admin.message_user(request, summary[0].upper() + summary[1:] + ".", level)
            logger.info("admin import by %s: %s", request.user.get_username(), summary)
            return HttpResponseRedirect(changelist)
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": Account._meta,
        "title": "Import tokens",
        "form": form,
        "changelist_url": changelist,
        "has_view_permission": model_admin.has_view_permission(request),
    }
    return TemplateResponse(request, "admin/pools/account/import.html", context)


def export_response(request: HttpRequest, queryset: QuerySet[Account]) -> HttpResponse:
    """The selected accounts' whole tokens as a JSON Lines file the importer reads back."""
    now = timezone.now()
    rows = queryset.order_by("pk").values_list("token", "tier", "note")
    lines = [
        f"# grok2api token export, {now:%Y-%m-%d %H:%M} UTC. CONTAINS SECRETS: each line signs in to a Grok "
        "account. Keep it private; delete it when done. Re-import with `manage.py import_tokens FILE`."
    ]
    count = 0
    for token, tier, note in rows.iterator(chunk_size=2000):
        entry = {"token": token, "tier": tier, **({"note": note} if note else {})}
        lines.append(json.dumps(entry, ensure_ascii=False))
        count += 1
    response = HttpResponse("\n".join(lines) + "\n", content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="grok-tokens-{now:%Y%m%d-%H%M%S}.jsonl"'
    response["Cache-Control"] = "no-store"
    logger.warning("admin export by %s: %d whole token(s) downloaded", request.user.get_username(), count)
    return response
