from django.apps import AppConfig
from django.db.models.signals import post_save


class PoolsConfig(AppConfig):
    name = "pools"
    verbose_name = "Account pools"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here, not at the top: pools.settings imports the models, which exist only once apps load.
        from pools import settings

        post_save.connect(settings.publish_saved, sender=settings.RuntimeSettings,
                          dispatch_uid="pools.runtime-settings.publish")
