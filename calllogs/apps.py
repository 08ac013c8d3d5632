from django.apps import AppConfig


class CalllogsConfig(AppConfig):
    name = "calllogs"
    verbose_name = "Call logs"
    default_auto_field = "django.db.models.BigAutoField"
