from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('pools', '0003_hide_unused_runtime_settings'),
    ]

    operations = [
        migrations.AddField(
            model_name='runtimesettings',
            name='list_model_aliases',
            field=models.BooleanField(
                default=False, help_text='GET /v1/models lists the alias ids too (they work in requests either way).'
            ),
        ),
    ]
