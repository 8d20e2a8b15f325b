from django.urls import path

from reports import views

urlpatterns = [
    path("", views.home),
    path("sign-in", views.sign_in),
    path("sign-out", views.sign_out),
    path("herald-token", views.herald_token),
    path("reports", views.start_report),
]
