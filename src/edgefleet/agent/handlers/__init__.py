"""The agent's built-in request handlers, each a plug-in of ``edgefleet.agent.handlers``.

system         GET /system/properties[/{key}], GET /system/status, POST /system/reboot
firmware       POST /system/firmware (download, verify, install, reboot; events)
configuration  POST /system/export, PUT /system/import
syslog         POST /system/syslog
services       GET /system/services[/{name}], PUT /system/services/{name}
jobs           DELETE /system/tasks/{task_id} (cancel a request's background work)
"""
