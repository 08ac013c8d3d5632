from django.apps import AppConfig


class MediaCacheConfig(AppConfig):
    name = "media_cache"
    verbose_name = "Media cache"
    default_auto_field = "django.db.models.BigAutoField"
