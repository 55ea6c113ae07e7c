# Images for docker-compose.yml (the multi-node picture). Two stages, each usable as a build `target`:
#
#   gcs-emulator  gcp-storage-emulator at the version requirements.lock pins (the one `make run` uses)
#   airflow       Apache Airflow 3.3.2 with the providers and libraries of requirements.txt at the versions
#                 requirements.lock pins, plus the wedsync_dr library. The last stage: `docker build .` builds it.

FROM python:3.11-slim AS gcs-emulator
COPY requirements.lock /tmp/requirements.lock
RUN pip install --no-cache-dir --disable-pip-version-check gcp-storage-emulator -c /tmp/requirements.lock \
    && useradd --system --create-home --home-dir /data gcs
USER gcs
WORKDIR /data
# Objects persist under /data (a named volume in docker-compose.yml).
ENV STORAGE_BASE=/data
EXPOSE 9023
# The emulator's listen queue of 5 drops concurrent connects (uploads send several small objects at once):
# started as the local stack starts it, with a queue of 128 (wedsync_dr_dev.local_stack._GCS_EMULATOR_MAIN).
ENTRYPOINT ["python", "-c", "import socketserver, sys; socketserver.TCPServer.request_queue_size = 128; from gcp_storage_emulator.__main__ import main; sys.exit(main(sys.argv[1:]))"]
CMD ["start", "--host", "0.0.0.0", "--port", "9023"]


FROM apache/airflow:3.3.2-python3.11 AS airflow
USER airflow

# Dependencies first: the slow layer, rebuilt only when the requirements change. requirements.lock is the
# full uv-compiled pin set; as the constraints file it gives the image exactly the versions the tests ran
# with. apache-airflow==3.3.2 is pinned in requirements.txt, so pip never swaps the image's Airflow.
COPY --chown=airflow:0 requirements.txt requirements.lock /opt/airflow/requirements/
RUN pip install --no-cache-dir -r /opt/airflow/requirements/requirements.txt \
        -c /opt/airflow/requirements/requirements.lock

# The library, installed editable from /opt/airflow/include: docker-compose.yml mounts ./include over it,
# so a code change needs a restart, not a rebuild. The Celery provider and redis come with the base image
# (they are not in the lock): fail the build here rather than at the first task if they went missing.
COPY --chown=airflow:0 pyproject.toml /opt/airflow/pyproject.toml
COPY --chown=airflow:0 include/ /opt/airflow/include/
RUN pip install --no-cache-dir --no-deps -e /opt/airflow \
    && python -c "import wedsync_dr.policy, airflow.providers.celery, redis"

# DAGs and plugins are baked in as well, so the image also runs where there is no checkout to mount.
COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/

# Mount points of the shared named volumes (backup staging, the asset source store): a new volume takes
# this owner and mode. Group 0 so that any AIRFLOW_UID (always run with group 0) can write.
RUN mkdir -p /opt/airflow/staging /opt/airflow/assets \
    && chmod 0770 /opt/airflow/staging /opt/airflow/assets
