"""Every LinkBatchItem has its notice (0014 wrote them); the item's own state columns go.

A migration of its own: on PostgreSQL a table cannot be altered in the
transaction that just updated its rows under deferred foreign-key checks.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('credentials', '0014_link_batch_items_through_the_outbox'),
    ]

    operations = [
        migrations.AlterField(
            model_name='linkbatchitem',
            name='notice',
            field=models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='link_batch_item', to='credentials.notice'),
        ),
        migrations.RemoveField(model_name='linkbatchitem', name='state'),
        migrations.RemoveField(model_name='linkbatchitem', name='link'),
        migrations.RemoveField(model_name='linkbatchitem', name='finished_at'),
        migrations.RemoveField(model_name='linkbatchitem', name='error'),
    ]
