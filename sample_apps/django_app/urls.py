from django.urls import path

from sample_apps.django_app import views

urlpatterns = [
    path("", views.home),
    path("admin-only/", views.admin_only),
    path("api/me", views.api_me),
    path("two-factor/", views.two_factor),
    path("healthz", views.healthz),
]
